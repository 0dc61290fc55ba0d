package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"onebackup/internal/oned/onedtest"
)

// In-place restore (`onevm restore` → tm/<tm_mad>/restore) of powered-off KVM VMs on file system
// datastores, from restic and rsync backups: the disks (and the vTPM state) come back byte for
// byte as they were at the chosen increment, the VM boots, and its next backup starts a chain.

// restoreOned serves what the TM restore asks oned: the VM, the backup image, its datastore.
func restoreOned(t *testing.T, vm []byte, imgID int, img string, dsID int, ds string) []string {
	img = strings.Replace(img, "<TYPE>6</TYPE>", fmt.Sprintf("<TYPE>6</TYPE><DATASTORE_ID>%d</DATASTORE_ID>", dsID), 1)
	return onedServing(t, func(c onedtest.Call) onedtest.Reply {
		switch {
		case c.Method == "one.vm.info":
			return onedtest.OK(string(vm))
		case c.Method == "one.image.info" && c.Int(1) == imgID:
			return onedtest.OK(img)
		case c.Method == "one.datastore.info" && c.Int(1) == dsID:
			return onedtest.OK(ds)
		}
		return onedtest.Fail(fmt.Sprintf("[%s] Error getting object [%d].", c.Method, c.Int(1)))
	})
}

func restoreArgs(host string, vm *testVM, imgID, inc, disk int) []string {
	return []string{host + ":" + vmDir(vm.id), strconv.Itoa(vm.id), strconv.Itoa(imgID), strconv.Itoa(inc), strconv.Itoa(disk)}
}

// checkRestored compares every listed disk with its expected content, and checks that no bitmap
// and nothing of the restore is left.
func (vm *testVM) checkRestored(t *testing.T, want map[int]string) {
	t.Helper()
	for id, exp := range want {
		sameDisk(t, fmt.Sprintf("%s/disk.%d", vm.dir, id), exp, fmt.Sprintf("disk %d after the restore", id))
		if bms := vm.bitmaps(t, id); len(bms) != 0 {
			t.Errorf("disk %d keeps bitmaps %v after the restore", id, bms)
		}
	}
	vm.checkNoRestoreLeft(t)
}

func (vm *testVM) checkNoRestoreLeft(t *testing.T) {
	t.Helper()
	left, _ := filepath.Glob(vm.dir + "/*restore*")
	more, _ := filepath.Glob(vm.dir + "/disk.*.snap/*restore*")
	if left = append(left, more...); len(left) > 0 {
		t.Errorf("the restore left %v", left)
	}
}

func TestInPlaceRestore(t *testing.T) {
	env := needKVM(t)
	// Both backends with both drivers; the ssh driver's VM is restored onto the other host.
	for _, c := range []struct {
		store, mad, host string
		vid, dsID, imgID int
	}{
		{"restic", "qcow2", "hv1", 730, 485, 40}, {"rsync", "ssh", "hv2", 731, 486, 41},
		{"rsync", "qcow2", "hv1", 735, 482, 46}, {"restic", "ssh", "hv2", 736, 483, 47},
	} {
		t.Run(c.store+"/"+c.mad, func(t *testing.T) {
			vid, dsID, imgID := c.vid, c.dsID, c.imgID
			base := resetDS(t, dsID)
			ds, repo := resticDS(dsID, nil), fmt.Sprintf("%s/%d", base, vid)
			if c.store == "rsync" {
				ds, repo = rsyncDS(dsID, nil), base
			}
			// Disk 0 as the qcow2 driver lays it out (a link to an overlay over the image),
			// disk 1 a plain qcow2 file as the ssh driver leaves it; a vTPM.
			vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 64}, &tdisk{id: 1, format: "qcow2", sizeMiB: 32, plain: true})
			vm.rsync = c.store == "rsync"
			tpmFile := vm.dir + "/tpm/tpm2-00.permall"
			os.MkdirAll(vm.dir+"/tpm", 0o755)
			chownOneadmin(t, vm.dir)
			var chain []inc
			var want []map[int]string
			cfg := bcfg{mode: "INCREMENT", incMode: "CBT", tpm: true, tmMad: c.mad, disks: "0:1"}
			for k := 0; k < 3; k++ {
				os.WriteFile(tpmFile, []byte(fmt.Sprintf("vTPM state %d", k)), 0o600)
				chownOneadmin(t, vm.dir+"/tpm")
				want = append(want, vm.expect(t, fmt.Sprint(k)))
				cfg.li = k - 1
				chain = append(chain, inc{k, vm.backupRound(t, ds, cfg)})
				vm.write(t, 0, 0x40+k, int64(4+k)<<20, 1<<20)
				vm.write(t, 0, -1, 1<<20, 64<<10)
				vm.write(t, 1, 0x48+k, int64(k)<<20, 256<<10)
			}
			// The disks and the vTPM change after the last backup; restore increment 1.
			vm.write(t, 0, 0x77, 0, 32<<20)
			vm.write(t, 1, 0x78, 0, 16<<20)
			os.WriteFile(tpmFile, []byte("overwritten"), 0o600)
			img := imageXML(imgID, vid, "", chain, "")
			oned := restoreOned(t, vm.xml(cfg), imgID, img, dsID, ds)
			r := env.tm(t, c.mad, "restore", restoreArgs(c.host, vm, imgID, 1, -1), nil, oned...)
			if r.code != 0 {
				t.Fatalf("restore of increment 1: exit %d: %s", r.code, r.stderr)
			}
			vm.checkRestored(t, want[1])
			if got, _ := os.ReadFile(tpmFile); string(got) != "vTPM state 1" {
				t.Errorf("vTPM state after the restore: %q", got)
			}
			if entries := dirNames(t, vm.dir+"/disk.0.snap"); strings.Join(entries, " ") != "0 disk.0.snap" {
				t.Errorf("disk.0.snap holds %v after the restore, want the restored 0 and its self link", entries)
			}
			// The shadows follow the restore; the VM boots; its next backup starts a chain.
			for id, exp := range want[1] {
				run(t, "cp", "--sparse=always", exp, vm.disk(id).shadow)
			}
			vm.start(t)
			vm.stop(t)
			after := vm.expect(t, "after")
			cfg.li = -1
			id := vm.backupRound(t, ds, cfg)
			for d, exp := range after {
				vm.restoreCompare(t, repo, []string{id}, d, exp)
			}

			// One disk only (DISK_ID=0), from increment 2: disk 1 and the vTPM stay as they are.
			r = env.tm(t, c.mad, "restore", restoreArgs(c.host, vm, imgID, 2, 0), nil, oned...)
			if r.code != 0 {
				t.Fatalf("restore of disk 0 at increment 2: exit %d: %s", r.code, r.stderr)
			}
			vm.checkRestored(t, map[int]string{0: want[2][0]})
			sameDisk(t, vm.dir+"/disk.1", after[1], "disk 1, not restored")
			if got, _ := os.ReadFile(tpmFile); string(got) != "vTPM state 1" {
				t.Errorf("a one-disk restore changed the vTPM state: %q", got)
			}
		})
	}
}

// TestInPlaceRestoreRawDisk: a raw disk comes back as a raw file (a qcow2 in its place would
// be read as raw data by the VM), and a persistent disk (disk.<id> a link to the image in the
// image datastore) gets its image replaced.
func TestInPlaceRestoreRawDisk(t *testing.T) {
	env := needKVM(t)
	vid, dsID, imgID := 733, 488, 43
	resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 32}, &tdisk{id: 1, format: "raw", sizeMiB: 16})
	persistent := &tdisk{id: 2, format: "qcow2", sizeMiB: 16, shadow: filepath.Join(vm.tmp, "shadow.2")}
	image := fmt.Sprintf("/var/lib/one/datastores/1/img-%d-persistent", vid)
	run(t, "qemu-img", "create", "-q", "-f", "raw", persistent.shadow, "16M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", image, "16M")
	run(t, "chown", "oneadmin:oneadmin", image)
	os.Symlink(image, vm.dir+"/disk.2")
	vm.disks = append(vm.disks, persistent)
	vm.write(t, 1, 0x31, 1<<20, 2<<20)
	vm.write(t, 2, 0x34, 3<<20, 2<<20)
	want := vm.expect(t, "0")
	cfg := bcfg{mode: "FULL", li: -1, disks: "0:1:2"}
	id := vm.backupRound(t, ds, cfg)
	vm.write(t, 1, 0x32, 0, 16<<20)
	vm.write(t, 0, 0x33, 0, 16<<20)
	vm.write(t, 2, 0x35, 0, 8<<20)
	oned := restoreOned(t, vm.xml(cfg), imgID, imageXML(imgID, vid, "", []inc{{0, id}}, ""), dsID, ds)
	if r := env.tm(t, "qcow2", "restore", restoreArgs("hv1", vm, imgID, 0, -1), nil, oned...); r.code != 0 {
		t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
	}
	vm.checkRestored(t, want)
	if info := run(t, "qemu-img", "info", vm.dir+"/disk.1"); !strings.Contains(info, "file format: raw") {
		t.Errorf("the raw disk is no longer raw:\n%s", info)
	}
	if target, _ := os.Readlink(vm.dir + "/disk.2"); target != image {
		t.Errorf("the persistent disk's link now points at %q", target)
	}
	sameDisk(t, image, want[2], "the persistent image")
	os.Remove(image)
}

// TestInPlaceRestoreKilled: SIGTERM, then SIGKILL, of the restore while it writes a disk: the
// VM's disk is the original, nothing is left in the VM directory, and a second restore works.
func TestInPlaceRestoreKilled(t *testing.T) {
	env := needKVM(t)
	vid, dsID, imgID := 734, 489, 44
	resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 1024})
	random := filepath.Join(vm.tmp, "random")
	run(t, "dd", "if=/dev/urandom", "of="+random, "bs=1M", "count=400", "status=none")
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", random, vm.dir+"/disk.0")
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", random, vm.disk(0).shadow)
	want := vm.expect(t, "0")
	cfg := bcfg{mode: "INCREMENT", li: -1, incMode: "CBT", disks: "0"}
	id := vm.backupRound(t, ds, cfg)
	vm.write(t, 0, 0x55, 0, 8<<20)
	orig := vm.expect(t, "orig")
	oned := restoreOned(t, vm.xml(cfg), imgID, imageXML(imgID, vid, "", []inc{{0, id}}, ""), dsID, ds)
	args := restoreArgs("hv1", vm, imgID, 0, -1)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		cmd := env.tmCmd(t, "qcow2", "restore", args, nil, oned...)
		var errb strings.Builder
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		piece := vm.dir + "/restore.tmp/disk.0/0"
		waitFor(t, "the restore to write disk 0", 60*time.Second, func() bool {
			fi, err := os.Stat(piece)
			return err == nil && fi.Size() > 16<<20
		})
		cmd.Process.Signal(sig)
		if err := cmd.Wait(); err == nil {
			t.Fatalf("the restore finished despite %v: %s", sig, errb.String())
		}
		waitFor(t, "the host side of the restore to stop", 30*time.Second, func() bool {
			return len(processesMatching("restore-receive", vm.dir)) == 0
		})
		vm.checkNoRestoreLeft(t)
		sameDisk(t, vm.dir+"/disk.0", orig[0], fmt.Sprintf("disk 0 after a restore stopped by %v", sig))
	}
	if r := env.tm(t, "qcow2", "restore", args, nil, oned...); r.code != 0 {
		t.Fatalf("restore after the killed ones: exit %d: %s", r.code, r.stderr)
	}
	vm.checkRestored(t, want)
}
