package test

import (
	"fmt"
	"strings"
	"testing"
)

// KVM file rows of the matrix, end to end: TM prebackup → restic backup → TM postbackup →
// restore (restic dump + chain rebuild) → qemu-img compare with the disk at backup time.

// Full backups of a qcow2 disk (an overlay over an image: the backup flattens the chain), a raw
// disk and a volatile disk (BACKUP_VOLATILE=YES), live and powered off, twice each.
func TestKVMFileFull(t *testing.T) {
	env := needKVM(t)
	for i, live := range []bool{true, false} {
		t.Run(map[bool]string{true: "live", false: "poweroff"}[live], func(t *testing.T) {
			vid := 510 + i
			base := resetDS(t, 400+i)
			ds := resticDS(400+i, nil)
			vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 64}, &tdisk{id: 1, format: "raw", sizeMiB: 32},
				&tdisk{id: 2, format: "raw", sizeMiB: 16, volatile: true})
			if live {
				vm.start(t)
			}
			vm.write(t, 0, 0xa1, 0, 1<<20)
			vm.write(t, 1, 0xb1, 4<<20, 3<<20)
			vm.write(t, 2, 0xc1, 1<<20, 2<<20)
			for round := 0; round < 2; round++ {
				want := vm.expect(t, fmt.Sprint(round))
				c := bcfg{mode: "FULL", li: -1, live: live, disks: "0:1:2"}
				id := vm.backupRound(t, ds, c)
				for d, exp := range want {
					vm.restoreCompare(t, base+fmt.Sprint("/", vid), []string{id}, d, exp)
				}
				if live && len(vm.checkpoints(t)) != 0 {
					t.Errorf("FULL mode left checkpoints %v", vm.checkpoints(t))
				}
				vm.write(t, 0, 0xa2+round, 2<<20, 1<<20)
				vm.write(t, 1, -1, 5<<20, 64<<10)
				vm.write(t, 2, 0xc2+round, 0, 1<<20)
			}
		})
	}
}

// CBT: a full and two increments, live and powered off, uploaded with restic and with rsync.
// Increments hold only the changed clusters (zeroed ones included); writes made after the
// backup point are not in that backup and are in the next one.
func TestKVMFileCBT(t *testing.T) {
	env := needKVM(t)
	n := 0
	for _, store := range []string{"restic", "rsync"} {
		for _, live := range []bool{true, false} {
			n++
			vid, dsID := 520+n, 410+n
			t.Run(store+"/"+map[bool]string{true: "live", false: "poweroff"}[live], func(t *testing.T) {
				cbtChain(t, env, vid, dsID, live, store == "rsync")
			})
		}
	}
}

func cbtChain(t *testing.T, env *kvmEnv, vid, dsID int, live, rsync bool) {
	base := resetDS(t, dsID)
	repo := base + fmt.Sprint("/", vid)
	ds := resticDS(dsID, nil)
	if rsync {
		repo, ds = base, rsyncDS(dsID, nil)
	}
	// Two qcow2 disks backed up together (one checkpoint covers both) and a raw disk that is
	// not selected (checkpoint='no', backup='no').
	vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 64}, &tdisk{id: 1, format: "qcow2", sizeMiB: 16}, &tdisk{id: 2, format: "raw", sizeMiB: 8})
	vm.rsync = rsync
	if live {
		vm.start(t)
	}
	vm.write(t, 0, 0xc1, 8<<20, 4<<20)
	vm.write(t, 1, 0xc2, 0, 1<<20)
	vm.write(t, 2, 0xc3, 0, 1<<20)
	var chain []string
	var wants []map[int]string
	for k := 0; k < 3; k++ {
		wants = append(wants, vm.expect(t, fmt.Sprint(k)))
		c := bcfg{mode: "INCREMENT", li: k - 1, incMode: "CBT", live: live, disks: "0:1"}
		pre := vm.env.tm(t, "qcow2", actionName("prebackup", live), vm.tmArgs("0:1"), vm.xml(c))
		if pre.code != 0 {
			t.Fatalf("prebackup %d: %s", k, pre.stderr)
		}
		// Written after the backup point, before the upload: not in this backup.
		vm.write(t, 0, 0xd0+k, int64(20+k)<<20, 256<<10)
		chain = append(chain, vm.upload(t, ds))
		post := vm.env.tm(t, "qcow2", actionName("postbackup", live), vm.tmArgs("0:1"), vm.xml(c))
		if post.code != 0 || strings.Contains(post.stderr, "WARNING") {
			t.Fatalf("postbackup %d: %s", k, post.stderr)
		}
		vm.checkClean(t)
		anchor := fmt.Sprintf("one-%d-%d", vid, k)
		if bms := vm.bitmaps(t, 1); !live && (len(bms) != 1 || bms[0] != anchor) {
			t.Errorf("after backup %d: disk 1 bitmaps %v, want [%s]", k, bms, anchor)
		}
		if live {
			if cps := vm.checkpoints(t); len(cps) != 1 || cps[0] != anchor {
				t.Errorf("after backup %d: checkpoints %v, want [%s]", k, cps, anchor)
			}
		}
		if !live {
			if bms := vm.bitmaps(t, 0); len(bms) != 1 || bms[0] != anchor {
				t.Errorf("after backup %d: bitmaps %v, want [%s]", k, bms, anchor)
			}
		}
		// Changes for the next increment: data, and zeros over old data.
		vm.write(t, 0, 0xe0+k, int64(30+k)<<20, 128<<10)
		vm.write(t, 0, -1, 8<<20, 64<<10)
		vm.write(t, 1, 0xe8+k, int64(2+k)<<20, 64<<10)
		vm.write(t, 2, 0xee, int64(2+k)<<20, 64<<10)
	}
	for k := range chain {
		for _, d := range []int{0, 1} {
			sizes := vm.restoreCompare(t, repo, chain[:k+1], d, wants[k][d])
			if k > 0 && sizes[k] > 2<<20 {
				t.Errorf("disk %d increment %d is %d bytes: more than the changed clusters", d, k, sizes[k])
			}
		}
	}
}

// Writes the VM makes while the live backup job copies the disk are not in that backup and are
// in the next increment.
func TestKVMFileWritesDuringBackup(t *testing.T) {
	env := needKVM(t)
	vid := 529
	base := resetDS(t, 415)
	repo := base + fmt.Sprint("/", vid)
	ds := resticDS(415, nil)
	vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 512})
	for i := 0; i < 4; i++ { // 256 MiB to copy: the job is still running when the guest writes
		run(t, "runuser", "-u", "oneadmin", "--", "qemu-io", "-f", "qcow2", "-c",
			fmt.Sprintf("write -P 0x%02x %d %d", 0x20+i, int64(i)*128<<20, 64<<20), vm.dir+"/disk.0")
		run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %d %d", 0x20+i, int64(i)*128<<20, 64<<20), vm.disk(0).shadow)
	}
	vm.start(t)
	var chain []string
	var wants []map[int]string
	for k := 0; k < 2; k++ {
		wants = append(wants, vm.expect(t, fmt.Sprint(k)))
		c := bcfg{mode: "INCREMENT", li: k - 1, incMode: "CBT", live: true, disks: "0"}
		cmd, errb := startTM(t, env, "prebackup_live", vm, c, "export")
		waitFile(t, vm.dir+"/tmp/hold.export", cmd, errb)
		// Over data the job has not necessarily copied yet, and over fresh space.
		vm.write(t, 0, 0xf0+k, int64(3)*128<<20+4<<20, 1<<20)
		vm.write(t, 0, 0xf8+k, 300<<20, 1<<20)
		run(t, "touch", vm.dir+"/tmp/release.export")
		if err := cmd.Wait(); err != nil {
			t.Fatalf("prebackup %d: %v: %s", k, err, errb.String())
		}
		chain = append(chain, vm.upload(t, ds))
		if r := env.tm(t, "qcow2", "postbackup_live", vm.tmArgs("0"), vm.xml(c)); r.code != 0 || strings.Contains(r.stderr, "WARNING") {
			t.Fatalf("postbackup %d: %s", k, r.stderr)
		}
		vm.checkClean(t)
	}
	for k := range chain {
		vm.restoreCompare(t, repo, chain[:k+1], 0, wants[k][0])
	}
}
