package checksum

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The record is what coreutils writes and checks: sha256sum -c accepts it in the directory.
func TestWriteDirIsSha256sumFormat(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "disk.0.0"), bytes.Repeat([]byte{7}, 1<<20), 0o644)
	os.WriteFile(filepath.Join(dir, "vm.xml"), []byte("PFZNPjwvVk0+\n"), 0o644)
	os.WriteFile(filepath.Join(dir, File), []byte("stale\n"), 0o644)
	sums, err := WriteDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 2 {
		t.Fatalf("recorded %v, want disk.0.0 and vm.xml", sums)
	}
	cmd := exec.Command("sha256sum", "--strict", "-c", File)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c: %v: %s", err, out)
	}
	data, _ := os.ReadFile(filepath.Join(dir, File))
	back, err := Parse(data)
	if err != nil || len(back) != 2 || back["vm.xml"] != sums["vm.xml"] {
		t.Fatalf("Parse(%q) = %v, %v", data, back, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("WriteDir left %v", left)
	}
}

func TestParseRefusesDamagedRecords(t *testing.T) {
	good := strings.Repeat("a", 64)
	for _, rec := range []string{
		"",
		good + "  disk.0.0\n" + good + "  disk.0.0\n",
		good[:63] + "  disk.0.0\n",
		strings.ToUpper(good) + "  disk.0.0\n",
		good + "  ../etc/passwd\n",
		good + "  dir/disk.0.0\n",
		good + "  ..\n",
		good + "  " + File + "\n",
		good + " disk.0.0\n",
	} {
		if _, err := Parse([]byte(rec)); err == nil {
			t.Errorf("Parse(%q) accepted a damaged record", rec)
		}
	}
	if _, err := Parse(bytes.Repeat([]byte(good+"  disk.0.0\n"), 20000)); err == nil {
		t.Error("Parse accepted a record of more than 1 MiB")
	}
}

func TestCheckerReportsTheBackupAndFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "disk.0.3"), []byte("guest data"), 0o644)
	sums, err := WriteDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	c := sums.NewChecker("1a2b3c4d", "/var/lib/one/datastores/0/42/backup/disk.0.3", &out)
	c.Write([]byte("guest data"))
	if err := c.Check(); err != nil || out.String() != "guest data" {
		t.Fatalf("the recorded content: %v, passed %q", err, out.String())
	}
	c = sums.NewChecker("1a2b3c4d", "/var/lib/one/datastores/0/42/backup/disk.0.3", &out)
	c.Write([]byte("guest dbta"))
	err = c.Check()
	if !IsCorrupt(err) || !strings.Contains(err.Error(), "backup 1a2b3c4d is corrupt: /var/lib/one/datastores/0/42/backup/disk.0.3 does not match") {
		t.Fatalf("a flipped byte: %v", err)
	}
	if c := sums.NewChecker("1a2b3c4d", "/x/vm.xml", &out); c.Recorded() || c.Check() != nil {
		t.Error("a file without a record is checked")
	}
	if c := Sums(nil).NewChecker("1a2b3c4d", "/x/disk.0.3", &out); c.Recorded() || c.Check() != nil {
		t.Error("a backup without a record is checked")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(strings.Repeat("0", 64) + "  disk.0.0\n" + strings.Repeat("f", 64) + " *vm.xml\n"))
	f.Add([]byte("x  y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			return
		}
		for name, sum := range s {
			if strings.ContainsAny(name, "/\x00\n") || name == ".." || len(sum) != 64 {
				t.Fatalf("accepted %q -> %q", name, sum)
			}
		}
		back, err := Parse(s.Format())
		if err != nil || len(back) != len(s) {
			t.Fatalf("Format does not parse back: %v", err)
		}
	})
}

// BenchmarkSumFile is the cost the record adds on the host: one read of each staged file.
func BenchmarkSumFile(b *testing.B) {
	p := filepath.Join(b.TempDir(), "disk.0.0")
	data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB
	os.WriteFile(p, data, 0o644)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := SumFile(p); err != nil {
			b.Fatal(err)
		}
	}
}

func TestReadRecordRefusesOversizedRecords(t *testing.T) {
	line := strings.Repeat("a", 64) + "  disk.0.0\n"
	big := func(w io.Writer) error {
		for i := 0; i < 30000; i++ { // 2.2 MB
			w.Write([]byte(line))
		}
		return nil
	}
	if _, err := ReadRecord("1a2b3c4d", "/x/sha256sums", big); !IsCorrupt(err) || !strings.Contains(err.Error(), "more than a checksum record can be") {
		t.Fatalf("oversized record: %v", err)
	}
	sums, err := ReadRecord("1a2b3c4d", "/x/sha256sums", func(w io.Writer) error { _, err := w.Write([]byte(line)); return err })
	if err != nil || sums["disk.0.0"] != strings.Repeat("a", 64) {
		t.Fatalf("ReadRecord = %v, %v", sums, err)
	}
}
