package test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// INCREMENT_MODE=SNAPSHOT, live and powered off: a full and two increments that restore to the
// disk at each backup point, with a failed upload between (the retry of the same increment
// must still hold every change since the previous backup: W-2).
func TestKVMFileSnapshot(t *testing.T) {
	env := needKVM(t)
	for i, variant := range []string{"live", "poweroff", "live-plain-file", "poweroff-plain-file"} {
		live, plain := !strings.HasPrefix(variant, "poweroff"), strings.HasSuffix(variant, "plain-file")
		t.Run(variant, func(t *testing.T) {
			vid := 600 + i
			base := resetDS(t, 430+i)
			repo := base + fmt.Sprint("/", vid)
			ds := resticDS(430+i, nil)
			mad := "qcow2"
			if plain {
				mad = "ssh" // the disk is a plain file in the VM directory
			}
			vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 64, plain: plain})
			if live {
				vm.start(t)
			}
			vm.write(t, 0, 0x81, 8<<20, 2<<20)
			var chain []string
			var wants []map[int]string
			for k := 0; k < 3; k++ {
				c := bcfg{mode: "INCREMENT", li: k - 1, incMode: "SNAPSHOT", live: live, freeze: "SUSPEND", tmMad: mad}
				if k == 1 {
					// A try whose upload fails: postbackup gets BACKUP_RESULT=FAILURE.
					if r := env.tm(t, mad, actionName("prebackup", live), vm.tmArgs("0"), vm.xml(c)); r.code != 0 {
						t.Fatalf("prebackup: %s", r.stderr)
					}
					vm.write(t, 0, 0x9a, 40<<20, 1<<20) // after the failed try's backup point
					up := h.driverCmd(t, "restic", "backup", backupArgs("hv1", vm.id, ""), backupStdin(ds, vmXML(vm.id, "")))
					up.Start()
					time.Sleep(200 * time.Millisecond)
					up.Process.Signal(syscall.SIGTERM)
					up.Wait()
					failed := c
					failed.extraXML = "<BACKUP_RESULT>FAILURE</BACKUP_RESULT>"
					if r := env.tm(t, mad, actionName("postbackup", live), vm.tmArgs("0"), vm.xml(failed)); strings.Contains(r.stderr, "WARNING") {
						t.Fatalf("failure postbackup: %s", r.stderr)
					}
					vm.checkClean(t)
				}
				wants = append(wants, vm.expect(t, fmt.Sprint(k)))
				pre := env.tm(t, mad, actionName("prebackup", live), vm.tmArgs("0"), vm.xml(c))
				if pre.code != 0 {
					t.Fatalf("prebackup %d: %s", k, pre.stderr)
				}
				vm.write(t, 0, 0xd0+k, int64(20+k)<<20, 256<<10) // after the backup point
				chain = append(chain, vm.upload(t, ds))
				post := env.tm(t, mad, actionName("postbackup", live), vm.tmArgs("0"), vm.xml(c))
				if post.code != 0 || strings.Contains(post.stderr, "WARNING") {
					t.Fatalf("postbackup %d: %s", k, post.stderr)
				}
				vm.checkClean(t)
				link := strings.TrimSpace(run(t, "readlink", vm.dir+"/disk.0"))
				if want := fmt.Sprintf("disk.0.snap/%d", k+1); link != want {
					t.Errorf("after backup %d disk.0 -> %s, want %s", k, link, want)
				}
				vm.write(t, 0, 0xe0+k, int64(30+k)<<20, 128<<10)
				vm.write(t, 0, -1, 8<<20, 64<<10)
			}
			for k := range chain {
				sizes := vm.restoreCompare(t, repo, chain[:k+1], 0, wants[k][0])
				if k > 0 && sizes[k] > 4<<20 {
					t.Errorf("increment %d is %d bytes", k, sizes[k])
				}
			}
			if live {
				// The VM's own chain still works after a clean restart.
				vm.stop(t)
				vm.start(t)
				vm.checkClean(t)
			}
		})
	}
}

// SNAPSHOT mode, SIGTERM while the guest is suspended and during the export: the new layer is
// rolled back, the VM runs resumed on its layer 1, and the retry restores correctly.
func TestKVMFileSnapshotCancel(t *testing.T) {
	env := needKVM(t)
	vid := 610
	base := resetDS(t, 440)
	repo := base + fmt.Sprint("/", vid)
	ds := resticDS(440, nil)
	vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 32})
	vm.start(t)
	vm.write(t, 0, 0x61, 0, 2<<20)
	w0 := vm.expect(t, "0")
	chain := []string{vm.backupRound(t, ds, bcfg{mode: "INCREMENT", li: -1, incMode: "SNAPSHOT", live: true, freeze: "SUSPEND"})}
	for i, phase := range []string{"frozen", "export"} {
		vm.write(t, 0, 0x62+i, int64(4+i)<<20, 256<<10)
		c := bcfg{mode: "INCREMENT", li: 0, incMode: "SNAPSHOT", live: true, freeze: "SUSPEND", disks: "0"}
		cmd, errb := startTM(t, env, "prebackup_live", vm, c, phase)
		waitFile(t, vm.dir+"/tmp/hold."+phase, cmd, errb)
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		failed := c
		failed.extraXML = "<BACKUP_RESULT>FAILURE</BACKUP_RESULT>"
		env.tm(t, "qcow2", "postbackup_live", vm.tmArgs("0"), vm.xml(failed))
		vm.waitUnlocked(t)
		vm.checkClean(t)
		if link := strings.TrimSpace(run(t, "readlink", vm.dir+"/disk.0")); link != "disk.0.snap/1" {
			t.Errorf("%s: disk.0 -> %s after the cancelled try, want disk.0.snap/1", phase, link)
		}
		if layers := strings.Fields(run(t, "ls", vm.dir+"/disk.0.snap")); strings.Join(layers, " ") != "0 1 disk.0.snap" {
			t.Errorf("%s: layers %v after the cancelled try", phase, layers)
		}
	}
	w1 := vm.expect(t, "1")
	chain = append(chain, vm.backupRound(t, ds, bcfg{mode: "INCREMENT", li: 0, incMode: "SNAPSHOT", live: true, freeze: "SUSPEND"}))
	vm.restoreCompare(t, repo, chain[:1], 0, w0[0])
	vm.restoreCompare(t, repo, chain, 0, w1[0])
}
