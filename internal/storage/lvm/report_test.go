package lvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func lvmRun(t *testing.T, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// lvText is one logical volume in LVM's metadata text format.
func lvText(name, status, flags, seg string, n int) string {
	id := fmt.Sprintf("abcdef-%04d-ghij-klmn-opqr-stuv-wxyz%02d", n, n)
	return fmt.Sprintf("\t\t%s {\n\t\t\tid = %q\n\t\t\tstatus = [%s]\n\t\t\tflags = [%s]\n\t\t\tcreation_time = 1796304407\n\t\t\tcreation_host = \"test\"\n\t\t\tsegment_count = 1\n\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n%s\t\t\t}\n\t\t}\n",
		name, id, status, flags, seg)
}

// The parser reads what the real lvs prints: a volume group with a thin pool, a thin volume,
// two of our anchors of it and a thick volume, written as LVM metadata and restored onto a loop
// device with vgcfgrestore --force (device-mapper is not needed for that, nor for lvs).
func TestLVMReportRealLVS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test creates a loop device and a volume group: run it as root (make test does)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "pv.img")
	lvmRun(t, "truncate", "-s", "256M", img)
	loop := strings.TrimSpace(lvmRun(t, "losetup", "-f", "--show", img))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	vg := fmt.Sprintf("vg-onebackup-test-%d", os.Getpid())
	lvmRun(t, "pvcreate", "-q", loop)
	t.Cleanup(func() { exec.Command("pvremove", "-y", "-q", loop).Run() })
	lvmRun(t, "vgcreate", "-q", vg, loop)
	t.Cleanup(func() { exec.Command("vgremove", "-y", "-q", vg).Run() })
	empty := filepath.Join(dir, "empty.vg")
	lvmRun(t, "vgcfgbackup", "-f", empty, vg)
	// Restore the empty group before removing it: vgremove would try to deactivate the
	// thin volumes through device-mapper.
	t.Cleanup(func() { exec.Command("vgcfgrestore", "--force", "-f", empty, vg).Run() })

	text, err := os.ReadFile(empty)
	if err != nil {
		t.Fatal(err)
	}
	thin := func(dev, tx int, origin string) string {
		s := fmt.Sprintf("\t\t\t\textent_count = 4\n\t\t\t\ttype = \"thin\"\n\t\t\t\tthin_pool = \"lv-one-7-pool\"\n\t\t\t\ttransaction_id = %d\n\t\t\t\tdevice_id = %d\n", tx, dev)
		if origin != "" {
			s += fmt.Sprintf("\t\t\t\torigin = %q\n", origin)
		}
		return s
	}
	striped := func(count, pe int) string {
		return fmt.Sprintf("\t\t\t\textent_count = %d\n\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = [\"pv0\", %d]\n", count, pe)
	}
	rw, ro := `"READ", "WRITE", "VISIBLE"`, `"READ", "VISIBLE"`
	lvs := "\n\tlogical_volumes {\n\n" +
		lvText("lv-one-7-pool", rw, "", "\t\t\t\textent_count = 8\n\t\t\t\ttype = \"thin-pool\"\n\t\t\t\tmetadata = \"lv-one-7-pool_tmeta\"\n\t\t\t\tpool = \"lv-one-7-pool_tdata\"\n\t\t\t\ttransaction_id = 3\n\t\t\t\tchunk_size = 128\n\t\t\t\tdiscards = \"passdown\"\n\t\t\t\tzero_new_blocks = 1\n", 1) +
		lvText("lv-one-7-0", rw, "", thin(1, 0, ""), 2) +
		lvText("lv-one-7-0_one_backup_0", ro, `"ACTIVATION_SKIP"`, thin(2, 1, "lv-one-7-0"), 3) +
		lvText("lv-one-7-0_one_backup_1", ro, `"ACTIVATION_SKIP"`, thin(3, 2, "lv-one-7-0"), 4) +
		lvText("lv-one-8-0", rw, "", striped(4, 20), 5) +
		lvText("lv-one-7-pool_tmeta", `"READ", "WRITE"`, "", striped(1, 1), 6) +
		lvText("lv-one-7-pool_tdata", `"READ", "WRITE"`, "", striped(8, 2), 7) +
		lvText("lvol0_pmspare", `"READ", "WRITE"`, "", striped(1, 10), 8) +
		"\t}\n"
	s := strings.TrimRight(string(text), "\n")
	s = s[:strings.LastIndex(s, "}")] + lvs + "}\n"
	restored := filepath.Join(dir, "thin.vg")
	if err := os.WriteFile(restored, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	lvmRun(t, "vgcfgrestore", "--force", "-f", restored, vg)

	vols, err := (&System{}).Report(context.Background(), vg)
	if err != nil {
		t.Fatal(err)
	}
	const m = 4 << 20
	want := []Volume{
		{Name: "lv-one-7-0", VG: vg, Pool: "lv-one-7-pool", ThinID: 1, Size: 4 * m, SegType: "thin"},
		{Name: "lv-one-7-0_one_backup_0", VG: vg, Pool: "lv-one-7-pool", ThinID: 2, Size: 4 * m, Origin: "lv-one-7-0", SegType: "thin"},
		{Name: "lv-one-7-0_one_backup_1", VG: vg, Pool: "lv-one-7-pool", ThinID: 3, Size: 4 * m, Origin: "lv-one-7-0", SegType: "thin"},
		{Name: "lv-one-7-pool", VG: vg, ThinID: -1, Size: 8 * m, SegType: "thin-pool"},
		{Name: "lv-one-8-0", VG: vg, ThinID: -1, Size: 4 * m, SegType: "linear"},
	}
	if !slices.Equal(vols, want) {
		t.Errorf("lvs report\n%+v\nwant\n%+v", vols, want)
	}
	if v, _ := find(vols, "lv-one-8-0"); v.Thin() {
		t.Error("a linear volume reported thin")
	}
}

func TestLVMDeviceNames(t *testing.T) {
	for _, c := range [][2]string{
		{DeviceOf("vg-one-0", "lv-one-7-0", ""), "/dev/vg-one-0/lv-one-7-0"},
		{DeviceOf("vg-one-0", "lv-one-7-pool", "tpool"), "/dev/mapper/vg--one--0-lv--one--7--pool-tpool"},
		{DeviceOf("vg-one-0", "lv-one-7-pool", "tmeta"), "/dev/mapper/vg--one--0-lv--one--7--pool_tmeta"},
		{LockName("vg-one-0"), "tm-onelvm-vg_one_0.lock"},
	} {
		if c[0] != c[1] {
			t.Errorf("%s, want %s", c[0], c[1])
		}
	}
}
