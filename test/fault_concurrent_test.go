package test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Eight VMs of one backup job back up at the same time into one datastore (for restic: the
// job's one repository), while an rm of another VM's backup and an increment_flatten of a third
// VM's chain of the same job run: every action succeeds (they wait for each other's locks), and
// every restore point restores.
func TestConcurrentBackupJob(t *testing.T) {
	for _, c := range []struct {
		backend string
		dsID    int
	}{{"restic", 543}, {"rsync", 544}} {
		t.Run(c.backend, func(t *testing.T) {
			const job, flatVM, rmVM = "9", 778, 779
			base := resetDS(t, c.dsID)
			ds := resticDS(c.dsID, nil)
			repo := func(vmID int) string { return base + "/job_" + job }
			if c.backend == "rsync" {
				ds = rsyncDS(c.dsID, nil)
				repo = func(vmID int) string { return fmt.Sprintf("%s/%d", base, vmID) }
			}
			backup := func(vmID int) string {
				out := h.mustDriver(t, c.backend, "backup", backupArgs("hv1", vmID, job), backupStdin(ds, vmXML(vmID, "")))
				return strings.Fields(out)[0]
			}
			// The chain to flatten and the backup to remove, of other VMs of the job.
			chain := newDiskChain(t, flatVM, 1)
			var incs []inc
			for i := 0; i < 4; i++ {
				chain.next(t, stagingOf(flatVM))
				incs = append(incs, inc{i, backup(flatVM)})
			}
			stageBackup(t, stagingOf(rmVM), rmVM, 0, []int{8}, 1)
			removed := backup(rmVM)

			staged := map[int]*staged{}
			for vmID := 770; vmID < 778; vmID++ {
				staged[vmID] = stageBackup(t, stagingOf(vmID), vmID, 0, []int{16}, 4)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			results := map[string]result{}
			do := func(name string, f func() result) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := f()
					mu.Lock()
					results[name] = r
					mu.Unlock()
				}()
			}
			for vmID := range staged {
				do(fmt.Sprint("backup of VM ", vmID), func() result {
					return h.driver(t, c.backend, "backup", backupArgs("hv1", vmID, job), backupStdin(ds, vmXML(vmID, "")))
				})
			}
			do("rm", func() result {
				return h.driver(t, c.backend, "rm", []string{"21"}, dsMadStdin(imageXML(21, rmVM, job, []inc{{0, removed}}, ""), ds))
			})
			do("flatten", func() result {
				return h.driver(t, c.backend, "increment_flatten", []string{"22"}, flattenStdin(imageXML(22, flatVM, job, incs, ""), ds, 2))
			})
			wg.Wait()
			for name, r := range results {
				if r.code != 0 {
					t.Errorf("%s failed: %s", name, r.stderr)
				}
			}
			if t.Failed() {
				return
			}
			for vmID, st := range staged {
				id := strings.Fields(results[fmt.Sprint("backup of VM ", vmID)].stdout)[0]
				if c.backend == "restic" {
					h.checkSnapshot(t, repo(vmID), id, vmID, st)
				} else {
					checkRsyncBackup(t, base, vmID, id, st)
				}
			}
			kept := parseChain(t, strings.Fields(results["flatten"].stdout)[1])
			last := chain.refs[3][0]
			if c.backend == "restic" {
				sameDisk(t, resticRestore(t, repo(flatVM), flatVM, kept, 0), last, "the flattened chain")
				for _, s := range h.snapshots(t, repo(rmVM)) {
					if strings.HasPrefix(s.ID, removed) {
						t.Errorf("the removed backup %s is still in the repository", removed)
					}
				}
				h.restic(t, repo(rmVM), "check")
			} else {
				sameDisk(t, rsyncRestore(t, base, flatVM, kept, 0), last, "the flattened chain")
				if got := dirNames(t, repo(rmVM)); len(got) != 0 {
					t.Errorf("the removed backup left %v", got)
				}
			}
		})
	}
}
