package hostcli

import (
	"archive/tar"
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"
)

func writeTarGz(t *testing.T, p string, members map[string]string) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	for name, data := range members {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write([]byte(data))
	}
	tw.Close()
	zw.Close()
	f.Close()
}

// The vTPM archive comes from a backup: members outside tpm/ are refused, never written.
func TestUntarTPMStaysInItsDirectory(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.tgz")
	writeTarGz(t, good, map[string]string{"tpm/tpm2-00.permall": "state"})
	if err := untarTPM(good, filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "out/tpm/tpm2-00.permall")); string(b) != "state" {
		t.Errorf("extracted %q", b)
	}
	for _, name := range []string{"../evil", "tpm/../../evil", "/etc/evil", "other/x"} {
		bad := filepath.Join(dir, "bad.tgz")
		writeTarGz(t, bad, map[string]string{name: "x"})
		if err := untarTPM(bad, filepath.Join(dir, "out2")); err == nil {
			t.Errorf("member %q accepted", name)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "evil")); err == nil {
		t.Error("a member escaped the directory")
	}
}
