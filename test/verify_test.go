package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"onebackup/internal/checksum"
	"onebackup/internal/oned/onedtest"
)

// Verified backups: the host records the SHA-256 of every staged file (sha256sums), the record
// travels with the backup, every read of a stored file is checked against it, and `onebackup
// verify` checks whole images or datastores. A damaged restic pack or a flipped byte in an rsync
// tree is reported as corruption naming the backup, never restored silently.

// recordStaged writes the checksum record of a staging directory, as the host side does once
// the disks are written.
func recordStaged(t *testing.T, dir string) {
	t.Helper()
	if _, err := checksum.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
}

// verifyOned serves what verify asks oned: the image pool, the images, their datastore.
func verifyOned(t *testing.T, dsID int, ds string, images map[int]string) []string {
	var pool strings.Builder
	pool.WriteString("<IMAGE_POOL>")
	for id, img := range images {
		img = strings.Replace(img, "<TYPE>6</TYPE>", fmt.Sprintf("<TYPE>6</TYPE><DATASTORE_ID>%d</DATASTORE_ID>", dsID), 1)
		images[id] = img
		pool.WriteString(img)
	}
	pool.WriteString("</IMAGE_POOL>")
	return onedServing(t, func(c onedtest.Call) onedtest.Reply {
		switch {
		case c.Method == "one.imagepool.info":
			return onedtest.OK(pool.String())
		case c.Method == "one.image.info" && images[c.Int(1)] != "":
			return onedtest.OK(images[c.Int(1)])
		case c.Method == "one.datastore.info" && c.Int(1) == dsID:
			return onedtest.OK(ds)
		}
		return onedtest.Fail(fmt.Sprintf("[%s] Error getting object [%d].", c.Method, c.Int(1)))
	})
}

// verify runs `onebackup verify` as the operator would.
func (h *harness) verify(t *testing.T, env []string, args ...string) result {
	t.Helper()
	r := h.asOneadminResult(t, env, append([]string{filepath.Join(h.repo, "bin", "onebackup"), "verify"}, args...)...)
	t.Logf("verify %v (exit %d):\n%s%s", args, r.code, r.stdout, r.stderr)
	return r
}

// wantLines checks that out has a line containing each of want.
func wantLines(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("no line with %q in:\n%s", w, out)
		}
	}
}

// flipByte changes one byte of a file in place.
func flipByte(t *testing.T, file string, off int64) {
	t.Helper()
	os.Chmod(file, 0o600)
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func chainURL(backend string, dsID, vmID int, incs []inc, point int, file string) string {
	var parts []string
	for _, it := range incs[:point+1] {
		parts = append(parts, fmt.Sprintf("%d:%s", it.id, it.snap))
	}
	return fmt.Sprintf("%s://%d//%s%s", backend, dsID, strings.Join(parts, ","), file)
}

func TestVerifyCorruptRsync(t *testing.T) {
	const dsID, vmID, oldVM, imgID, oldImg = 546, 781, 782, 46, 47
	base := resetDS(t, dsID)
	ds := rsyncDS(dsID, nil)
	var incs []inc
	var staged []*staged
	for i := 0; i < 3; i++ {
		st := stageBackup(t, stagingOf(vmID), vmID, i, []int{16}, 2)
		recordStaged(t, st.dir)
		id, _ := h.rsyncBackup(t, ds, "hv1", vmID, "", "")
		incs, staged = append(incs, inc{i, id}), append(staged, st)
	}
	// A backup made without a record (older onebackup, OpenNebula's driver) stays usable.
	stageBackup(t, stagingOf(oldVM), oldVM, 0, []int{8}, 1)
	oldID, _ := h.rsyncBackup(t, ds, "hv1", oldVM, "", "")
	oldIncs := []inc{{0, oldID}}

	dir1 := filepath.Join(base, fmt.Sprint(vmID), incs[1].snap)
	if got := dirNames(t, dir1); strings.Join(got, " ") != "disk.0.1 sha256sums vm.xml" {
		t.Fatalf("backup directory holds %v", got)
	}
	// The record is coreutils' format: the operator can check a directory by hand.
	run(t, "sh", "-c", "cd "+dir1+" && sha256sum --strict -c sha256sums")

	env := verifyOned(t, dsID, ds, map[int]string{imgID: imageXML(imgID, vmID, "", incs, ""), oldImg: imageXML(oldImg, oldVM, "", oldIncs, "")})
	r := h.verify(t, env, "--datastore", fmt.Sprint(dsID))
	if r.code != 0 {
		t.Fatalf("verify of good backups failed")
	}
	wantLines(t, r.stdout,
		fmt.Sprintf("image %d (VM %d) restore point 1 (backup %s): ok: 2 files match", imgID, vmID, incs[1].snap),
		fmt.Sprintf("image %d (VM %d) restore point 0 (backup %s): not verifiable", oldImg, oldVM, oldID),
		"4 restore points verified: 3 ok, 0 corrupt, 1 without checksums")
	disk := func(p int) string {
		return fmt.Sprintf("/var/lib/one/datastores/%d/%d/%s/disk.0.%d", dsID, vmID, incs[p].snap, p)
	}
	oldURL := chainURL("rsync", dsID, oldVM, oldIncs, 0, fmt.Sprintf("/var/lib/one/datastores/%d/%d/%s/disk.0.0", dsID, oldVM, oldID))
	h.download(t, "rsync", oldURL, env)

	// One bit of increment 1's disk flips on the backup server.
	flipByte(t, filepath.Join(dir1, "disk.0.1"), 1<<20+4096+17)
	for _, p := range []int{1, 2} {
		_, r := h.tryDownload(t, "rsync", chainURL("rsync", dsID, vmID, incs, p, disk(p)), env)
		if r.code == 0 || !strings.Contains(r.stderr, fmt.Sprintf("backup %s is corrupt: %s on oneadmin@bk1 does not match the checksum recorded", incs[1].snap, filepath.Join(dir1, "disk.0.1"))) {
			t.Errorf("download of restore point %d with a corrupt increment: exit %d, stderr %q", p, r.code, r.stderr)
		}
	}
	// Restore point 0 does not need it.
	got := h.download(t, "rsync", chainURL("rsync", dsID, vmID, incs, 0, disk(0)), env)
	if data, _ := os.ReadFile(got); string(data) != string(staged[0].files["disk.0.0"]) {
		t.Error("restore point 0 differs from what was backed up")
	}
	r = h.verify(t, env, fmt.Sprint(imgID))
	if r.code != 1 {
		t.Errorf("verify of a corrupt image: exit %d, want 1", r.code)
	}
	wantLines(t, r.stdout,
		fmt.Sprintf("restore point 0 (backup %s): ok", incs[0].snap),
		fmt.Sprintf("restore point 1 (backup %s): CORRUPT: backup %s is corrupt: %s on oneadmin@bk1 does not match", incs[1].snap, incs[1].snap, filepath.Join(dir1, "disk.0.1")),
		fmt.Sprintf("restore point 2 (backup %s): CORRUPT: it is rebuilt from backup %s, which is corrupt", incs[2].snap, incs[1].snap),
		"3 restore points verified: 1 ok, 2 corrupt")

	// A lost file is corruption too.
	os.Remove(filepath.Join(base, fmt.Sprint(vmID), incs[0].snap, "vm.xml"))
	r = h.verify(t, env, fmt.Sprint(imgID))
	wantLines(t, r.stdout, fmt.Sprintf("restore point 0 (backup %s): CORRUPT: backup %s is corrupt: %s is recorded but missing", incs[0].snap, incs[0].snap,
		fmt.Sprintf("/var/lib/one/datastores/%d/%d/%s/vm.xml", dsID, vmID, incs[0].snap)))

	// Bad input: a clear line, nothing read.
	for _, args := range [][]string{{}, {"12", "--datastore", "3"}, {"x1"}, {"--datastore", "1;rm"}, {"12", "--read-data-subset", "10%;x"}} {
		r := h.verify(t, env, args...)
		if r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || r.stdout != "" {
			t.Errorf("verify %v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
}

// packsOf lists the data packs of a restic repository on the backup server.
func packsOf(t *testing.T, repo string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	filepath.Walk(filepath.Join(repo, "data"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			out[p] = fi.Size()
		}
		return nil
	})
	return out
}

func TestVerifyCorruptRestic(t *testing.T) {
	const dsID, vmID, imgID = 547, 783, 48
	base := resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	repo := filepath.Join(base, fmt.Sprint(vmID))
	var incs []inc
	var first map[string]int64
	for i := 0; i < 2; i++ {
		st := stageBackup(t, stagingOf(vmID), vmID, i, []int{16}, 4)
		recordStaged(t, st.dir)
		incs = append(incs, inc{i, h.resticBackup(t, ds, "hv1", vmID, "", "")})
		if i == 0 {
			first = packsOf(t, repo)
		}
	}
	snaps := h.snapshots(t, repo)
	if !slices.Contains(snaps[0].Paths, stagingOf(vmID)+"/sha256sums") {
		t.Fatalf("the snapshot does not hold the record: %v", snaps[0].Paths)
	}
	env := verifyOned(t, dsID, ds, map[int]string{imgID: imageXML(imgID, vmID, "", incs, "")})
	r := h.verify(t, env, "--read-data-subset", "100%", fmt.Sprint(imgID))
	if r.code != 0 {
		t.Fatal("verify of good backups failed")
	}
	wantLines(t, r.stdout, "ok: restic check of repository", "reading 100% of its data",
		fmt.Sprintf("restore point 0 (backup %s): ok: 2 files match", incs[0].snap))

	// downloader.sh reads the first KiB of the stream, then closes it: restic is stopped
	// cleanly and leaves no lock (a lock left would hold every later prune and check).
	disk := func(p int) string { return fmt.Sprintf("/var/lib/one/datastores/0/%d/backup/disk.0.%d", vmID, p) }
	h.download(t, "restic", chainURL("restic", dsID, vmID, incs, 0, disk(0)), env)
	if locks := strings.TrimSpace(h.restic(t, repo, "list", "locks", "--no-lock")); locks != "" {
		t.Fatalf("locks left by the downloader: %s", locks)
	}

	// The biggest pack of the first backup (its disk data) gets one flipped bit.
	var packs []string
	for p := range first {
		packs = append(packs, p)
	}
	sort.Slice(packs, func(i, j int) bool { return first[packs[i]] > first[packs[j]] })
	flipByte(t, packs[0], first[packs[0]]/2)

	for _, p := range []int{0, 1} {
		_, r := h.tryDownload(t, "restic", chainURL("restic", dsID, vmID, incs, p, disk(p)), env)
		if r.code == 0 || !strings.Contains(r.stderr, fmt.Sprintf("backup %s is corrupt: %s cannot be read back: the repository's data for it is damaged", incs[0].snap, disk(0))) {
			t.Errorf("download of restore point %d over a damaged pack: exit %d, stderr %q", p, r.code, r.stderr)
		}
	}
	r = h.verify(t, env, "--read-data-subset", "100%", fmt.Sprint(imgID))
	if r.code != 1 {
		t.Errorf("verify of a damaged repository: exit %d, want 1", r.code)
	}
	wantLines(t, r.stdout,
		fmt.Sprintf("CORRUPT: repository %s is damaged: restic check", "sftp:oneadmin@bk1:"+repo),
		fmt.Sprintf("restore point 0 (backup %s): CORRUPT: backup %s is corrupt: %s cannot be read back", incs[0].snap, incs[0].snap, disk(0)),
		fmt.Sprintf("restore point 1 (backup %s): CORRUPT: it is rebuilt from backup %s", incs[1].snap, incs[0].snap))
}

// A flatten merges recorded backups into a new one: its inputs are checked before the merge,
// the merged backup gets a record of its own, and every kept restore point verifies and
// restores.
func TestVerifyFlattened(t *testing.T) {
	for _, tc := range []struct {
		backend    string
		dsID, vmID int
		imgID      int
		makeDS     func(int, dsAttrs) string
		diskPath   func(snap string, p, d int) string
	}{
		{"restic", 548, 784, 49, resticDS, func(_ string, p, d int) string {
			return fmt.Sprintf("/var/lib/one/datastores/0/784/backup/disk.%d.%d", d, p)
		}},
		{"rsync", 549, 785, 50, rsyncDS, func(snap string, p, d int) string {
			return fmt.Sprintf("/var/lib/one/datastores/549/785/%s/disk.%d.%d", snap, d, p)
		}},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			base := resetDS(t, tc.dsID)
			ds := tc.makeDS(tc.dsID, nil)
			c := newDiskChain(t, tc.vmID, 2)
			var incs []inc
			for i := 0; i < 4; i++ {
				c.next(t, stagingOf(tc.vmID))
				recordStaged(t, stagingOf(tc.vmID))
				var id string
				if tc.backend == "restic" {
					id = h.resticBackup(t, ds, "hv1", tc.vmID, "", "")
				} else {
					id, _ = h.rsyncBackup(t, ds, "hv1", tc.vmID, "", "")
				}
				incs = append(incs, inc{i, id})
			}
			out := h.mustDriver(t, tc.backend, "increment_flatten", []string{fmt.Sprint(tc.imgID)}, flattenStdin(imageXML(tc.imgID, tc.vmID, "", incs, ""), ds, 2))
			f := strings.Fields(out)
			if len(f) != 2 {
				t.Fatalf("flatten printed %q", out)
			}
			kept := parseChain(t, f[1])
			if tc.backend == "rsync" {
				run(t, "sh", "-c", fmt.Sprintf("cd %s/%d/%s && sha256sum --strict -c sha256sums", base, tc.vmID, kept[0].snap))
			}
			env := verifyOned(t, tc.dsID, ds, map[int]string{tc.imgID: imageXML(tc.imgID, tc.vmID, "", kept, "")})
			r := h.verify(t, env, fmt.Sprint(tc.imgID))
			if r.code != 0 {
				t.Fatal("verify of a flattened chain failed")
			}
			wantLines(t, r.stdout, fmt.Sprintf("restore point 2 (backup %s): ok: 3 files match", kept[0].snap),
				fmt.Sprintf("restore point 3 (backup %s): ok: 3 files match", kept[1].snap))
			// Every kept point, through the URLs ls gives the TM restore.
			img := imageXML(tc.imgID, tc.vmID, "", kept, "")
			for _, it := range kept {
				var urls map[string]string
				out := h.mustDriver(t, tc.backend, "ls", []string{"-i", fmt.Sprint(it.id)}, backupStdin(ds, vmXML(tc.vmID, "")+img))
				if err := json.Unmarshal([]byte(out), &urls); err != nil || len(urls) != 2 {
					t.Fatalf("ls -i %d printed %q", it.id, out)
				}
				for d := 0; d < 2; d++ {
					sameDisk(t, h.download(t, tc.backend, urls[fmt.Sprint(d)], env), c.refs[it.id][d], urls[fmt.Sprint(d)])
				}
			}
		})
	}
}
