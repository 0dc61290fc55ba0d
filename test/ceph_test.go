package test

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"onebackup/internal/oned/onedtest"
)

// Ceph rows of the matrix, end to end against a real cluster: TM prebackup (ceph system
// datastore) → restic or rsync upload → TM postbackup → restore through the downloader,
// compared byte for byte with an `rbd export` of the snapshot the backup was taken from.

// cephOned answers the TM actions' image lookups (the format of the chain being continued) and
// the downloaders' datastore lookups.
func cephOned(t *testing.T, imageFormats map[int]string, datastores map[int]string) []string {
	return onedServing(t, func(c onedtest.Call) onedtest.Reply {
		switch c.Method {
		case "one.image.info":
			if f, ok := imageFormats[c.Int(1)]; ok {
				return onedtest.OK(fmt.Sprintf("<IMAGE><ID>%d</ID><TYPE>6</TYPE><FORMAT>%s</FORMAT></IMAGE>", c.Int(1), f))
			}
			return onedtest.Fail(fmt.Sprintf("[one.image.info] Error getting image [%d].", c.Int(1)))
		case "one.datastore.info":
			if ds, ok := datastores[c.Int(1)]; ok {
				return onedtest.OK(ds)
			}
			return onedtest.Fail(fmt.Sprintf("[one.datastore.info] Error getting datastore [%d].", c.Int(1)))
		}
		return onedtest.Fail("unexpected call " + c.Method)
	})
}

// cephWrites changes both disks for the next increment: new data, zeros over old data, a write
// smaller than a qcow2 cluster, and a write across an RBD object boundary.
func cephWrites(t *testing.T, vm *testVM, k int) {
	vm.write(t, 0, 0xa0+k, int64(8+k)<<20, 192<<10)
	vm.write(t, 0, -1, 1<<20, 64<<10)
	vm.write(t, 0, 0xb0+k, int64(5<<20+1536+k*4096), 512)
	vm.write(t, 0, 0xc0+k, 4<<20-4096, 8192)
	if len(vm.disks) > 1 {
		vm.write(t, 1, 0xd0+k, int64(k)<<20, 4096)
	}
}

// cephURL is the downloader URL of disk d at point k of chain.
func cephURL(vm *testVM, dsID int, base string, chain []inc, d, k int) string {
	var parts []string
	for _, it := range chain[:k+1] {
		parts = append(parts, fmt.Sprintf("%d:%s", it.id, it.snap))
	}
	if vm.rsync {
		return fmt.Sprintf("rsync://%d//%s%s/%d/%s/disk.%d.%d", dsID, strings.Join(parts, ","), base, vm.id, chain[k].snap, d, k)
	}
	return fmt.Sprintf("restic://%d//%s%s/disk.%d.%d", dsID, strings.Join(parts, ","), stagingOf(vm.id), d, k)
}

// TestCephKVMChain: a full and two increments of a two-disk VM, live (a running domain on RBD
// network disks, suspended only around the snapshots) and powered off, to restic and to rsync.
// After each backup exactly one anchor one_backup_<k> is left; each point restores through the
// downloader to an `rbd export` of its snapshot, and writes made after the backup point are
// not in that backup.
func TestCephKVMChain(t *testing.T) {
	env := needKVM(t)
	needCeph(t).defineSecret(t)
	n := 0
	for _, store := range []string{"restic", "rsync"} {
		for _, live := range []bool{true, false} {
			vid, dsID := 700+n, 470+n
			n++
			t.Run(store+"/"+map[bool]string{true: "live", false: "poweroff"}[live], func(t *testing.T) {
				cephChain(t, env, vid, dsID, live, store == "rsync")
			})
		}
	}
}

func cephChain(t *testing.T, env *kvmEnv, vid, dsID int, live, rsync bool) {
	base := resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	if rsync {
		ds = rsyncDS(dsID, nil)
	}
	vm := cephVM(t, env, vid, 64, 16)
	vm.rsync = rsync
	// Image 7 is the chain's own image (qcow2 increments); image 3, an older backup of the VM in
	// rbd format, must not decide the format (W-14).
	vm.env2 = cephOned(t, map[int]string{7: "raw", 3: "rbd"}, map[int]string{dsID: ds})
	if live {
		vm.start(t)
	}
	vm.write(t, 0, 0x11, 0, 1<<20)
	var chain []inc
	var exports []map[int]string
	for k := 0; k < 3; k++ {
		c := bcfg{mode: "INCREMENT", li: k - 1, live: live, tmMad: "ceph", disks: "0:1",
			extraConfig: "<INCREMENTAL_BACKUP_ID>7</INCREMENTAL_BACKUP_ID>", extraXML: "<BACKUP_IDS><ID>3</ID><ID>7</ID></BACKUP_IDS>"}
		if live {
			c.freeze = "SUSPEND"
		}
		var want map[int]string
		vm.onStaged = func() {
			want = vm.expect(t, fmt.Sprint(k))
			if names := dirNames(t, stagingOf(vm.id)); strings.Join(names, " ") != fmt.Sprintf("disk.0.%d disk.1.%d sha256sums vm.xml", k, k) {
				t.Errorf("staged %v", names)
			}
			// After the backup point: in the next increment, not in this one.
			vm.write(t, 0, 0xe0+k, int64(20+k)<<20, 128<<10)
		}
		chain = append(chain, inc{k, vm.backupRound(t, ds, c)})
		exp := map[int]string{}
		for _, d := range vm.disks {
			vm.checkAnchors(t, d.id, fmt.Sprintf("one_backup_%d", k))
			exp[d.id] = ceph.export(t, fmt.Sprintf("%s@one_backup_%d", d.rbd, k), filepath.Join(vm.tmp, fmt.Sprintf("export.%d.%d", d.id, k)))
			sameDisk(t, exp[d.id], want[d.id], fmt.Sprintf("snapshot one_backup_%d of disk %d", k, d.id))
		}
		exports = append(exports, exp)
		cephWrites(t, vm, k)
	}
	denv := onedWithDatastores(t, map[int]string{dsID: ds})
	backend := map[bool]string{true: "rsync", false: "restic"}[rsync]
	for k := range chain {
		for _, d := range vm.disks {
			url := cephURL(vm, dsID, base, chain, d.id, k)
			sameDisk(t, h.download(t, backend, url, denv), exports[k][d.id], url)
		}
	}
}

// TestCephKVMFaults: SIGTERM during the export, leftovers of a killed run, a failed upload, a
// lost anchor and a FULL-mode backup, on a running VM. The user's own snapshot is never touched.
func TestCephKVMFaults(t *testing.T) {
	env := needKVM(t)
	needCeph(t).defineSecret(t)
	vid, dsID := 705, 475
	base := resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := cephVM(t, env, vid, 64)
	img := ceph.pool + "/" + vm.disk(0).rbd
	ceph.rbdCmd(t, "snap", "create", img+"@mine")
	vm.start(t)
	cfg := func(li int) bcfg {
		return bcfg{mode: "INCREMENT", li: li, live: true, freeze: "SUSPEND", tmMad: "ceph", disks: "0"}
	}
	var chain []inc
	var exports []string
	point := func(li int) {
		t.Helper()
		chain = append(chain, inc{li + 1, vm.backupRound(t, ds, cfg(li))})
		vm.checkAnchors(t, 0, "mine", fmt.Sprintf("one_backup_%d", li+1))
		exports = append(exports, ceph.export(t, fmt.Sprintf("%s@one_backup_%d", vm.disk(0).rbd, li+1), filepath.Join(vm.tmp, fmt.Sprintf("export.%d", li+1))))
	}
	point(-1)
	cephWrites(t, vm, 0)

	// SIGTERM while exporting increment 1: the VM runs, resumed; no temporary snapshot, no
	// anchor 1; anchor 0 stays.
	cmd, errb := startTM(t, env, "prebackup_live", vm, cfg(0), "export")
	waitFile(t, vm.dir+"/tmp/hold.export", cmd, errb)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err == nil {
		t.Fatalf("prebackup went on after SIGTERM: %s", errb.String())
	}
	t.Logf("prebackup after SIGTERM: %s", errb.String())
	vm.waitUnlocked(t)
	vm.checkClean(t)
	vm.checkAnchors(t, 0, "mine", "one_backup_0")

	// A killed run's leftovers: the temporary snapshot and the anchor being taken.
	ceph.rbdCmd(t, "snap", "create", img+"@one_backup")
	ceph.rbdCmd(t, "snap", "create", img+"@one_backup_1")
	ceph.rbdCmd(t, "snap", "protect", img+"@one_backup_1")
	point(0)
	cephWrites(t, vm, 1)

	// The upload of increment 2 fails: postbackup with BACKUP_RESULT=FAILURE keeps anchor 1,
	// and the retry of the same increment continues the chain.
	if r := env.tm(t, "ceph", "prebackup_live", vm.tmArgs("0"), vm.xml(cfg(1))); r.code != 0 {
		t.Fatalf("prebackup: %s", r.stderr)
	}
	failed := cfg(1)
	failed.extraXML = "<BACKUP_RESULT>FAILURE</BACKUP_RESULT>"
	if r := env.tm(t, "ceph", "postbackup_live", vm.tmArgs("0"), vm.xml(failed)); r.code != 0 {
		t.Fatalf("postbackup after a failed upload: %s", r.stderr)
	}
	vm.checkClean(t)
	vm.checkAnchors(t, 0, "mine", "one_backup_1")
	point(1)

	// Restore points 0, 1 and 2 (the retried one).
	denv := onedWithDatastores(t, map[int]string{dsID: ds})
	for k := range chain {
		url := cephURL(vm, dsID, base, chain, 0, k)
		sameDisk(t, h.download(t, "restic", url, denv), exports[k], url)
	}

	// The anchor oned expects is gone (W-11): a clear error, nothing else changes.
	ceph.rbdCmd(t, "snap", "unprotect", img+"@one_backup_2")
	ceph.rbdCmd(t, "snap", "rm", img+"@one_backup_2")
	r := env.tm(t, "ceph", "prebackup_live", vm.tmArgs("0"), vm.xml(cfg(2)))
	if r.code == 0 || !strings.Contains(r.stderr, "one_backup_2 of the backup chain is gone") || !strings.Contains(r.stderr, "reset the backup chain") {
		t.Fatalf("increment without its anchor: exit %d: %s", r.code, r.stderr)
	}
	vm.checkClean(t)
	vm.checkAnchors(t, 0, "mine")

	// FULL mode: a temporary snapshot for the point in time, no anchor left afterwards.
	ceph.rbdCmd(t, "snap", "create", img+"@one_backup_5")
	want := vm.expect(t, "full")
	id := vm.backupRound(t, ds, bcfg{mode: "FULL", li: -1, live: true, freeze: "SUSPEND", tmMad: "ceph", disks: "0"})
	vm.checkAnchors(t, 0, "mine")
	url := fmt.Sprintf("restic://%d//0:%s%s/disk.0.0", dsID, id, stagingOf(vm.id))
	sameDisk(t, h.download(t, "restic", url, denv), want[0], url)
}

// TestCephManyExtents: an increment of more than 5,000 separate changed extents (an image of
// 64 KiB objects, every other object written) is written in one pass and restores.
func TestCephManyExtents(t *testing.T) {
	env := needKVM(t)
	needCeph(t)
	vid, dsID := 706, 476
	base := resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := cephVM(t, env, vid, 1024)
	name := vm.disk(0).rbd
	ceph.removeImage(t, name)
	ceph.rbdCmd(t, "create", ceph.pool+"/"+name, "--size", "1024M", "--object-size", "64K")
	run(t, "qemu-img", "create", "-q", "-f", "raw", vm.disk(0).shadow, "1024M")
	cfg := func(li int) bcfg { return bcfg{mode: "INCREMENT", li: li, tmMad: "ceph", disks: "0"} }
	chain := []inc{{0, vm.backupRound(t, ds, cfg(-1))}}

	const n = 6000
	var script strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&script, "write -q -P 0x%02x %d 4096\n", 1+i%250, int64(2*i)<<16)
	}
	script.WriteString("quit\n")
	for _, cmd := range [][]string{
		{"runuser", "-u", "oneadmin", "--", "qemu-io", "-f", "raw", ceph.qemu(name)},
		{"qemu-io", "-f", "raw", vm.disk(0).shadow},
	} {
		if out, err := runStdin(script.String(), cmd...); err != nil || strings.Contains(out, "rror") {
			t.Fatalf("qemu-io: %v: %s", err, out)
		}
	}
	want := vm.expect(t, "1")
	peak := samplePeakRSS("onebackup-host")
	r := env.tm(t, "ceph", "prebackup", vm.tmArgs("0"), vm.xml(cfg(0)))
	t.Logf("peak RSS of onebackup-host writing the increment: %.1f MiB", float64(peak())/(1<<20))
	if r.code != 0 {
		t.Fatalf("prebackup of %d extents: %s", n, r.stderr)
	}
	m := regexp.MustCompile(`increment 1 holds ([0-9]+) changed extents`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no extent count in the log: %s", r.stderr)
	}
	if got, _ := strconv.Atoi(m[1]); got < 5000 {
		t.Fatalf("the increment has %d extents, the test wants more than 5000", got)
	}
	chain = append(chain, inc{1, vm.upload(t, ds)})
	if r := env.tm(t, "ceph", "postbackup", vm.tmArgs("0"), vm.xml(cfg(0))); r.code != 0 {
		t.Fatalf("postbackup: %s", r.stderr)
	}
	denv := onedWithDatastores(t, map[int]string{dsID: ds})
	url := cephURL(vm, dsID, base, chain, 0, 1)
	sameDisk(t, h.download(t, "restic", url, denv), want[0], url)
}

// TestCephLegacyChain: a chain OpenNebula ≤ 7.0 started in rbd format (rbd export
// --export-format 2, then export-diff; FORMAT rbd on the backup image) is continued with an
// .rbdiff increment; the downloader's bundle imports into a new image equal to the snapshot.
func TestCephLegacyChain(t *testing.T) {
	env := needKVM(t)
	needCeph(t)
	vid, dsID := 707, 477
	resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := cephVM(t, env, vid, 64)
	vm.env2 = cephOned(t, map[int]string{8: "rbd"}, map[int]string{dsID: ds})
	img := ceph.pool + "/" + vm.disk(0).rbd
	cfg := func(li int) bcfg {
		return bcfg{mode: "INCREMENT", li: li, tmMad: "ceph", disks: "0", extraConfig: "<INCREMENTAL_BACKUP_ID>8</INCREMENTAL_BACKUP_ID>"}
	}
	replyRe := regexp.MustCompile(`^([0-9a-f]{8}) [0-9]+ rbd\n$`)
	// The two first points as OpenNebula 7.0 staged them.
	var chain []inc
	legacy := func(k int, file string, argv ...string) {
		staging := stagingOf(vm.id)
		os.RemoveAll(staging)
		os.MkdirAll(staging, 0o755)
		os.WriteFile(staging+"/vm.xml", []byte(base64.StdEncoding.EncodeToString(vm.xml(cfg(k-1)))+"\n"), 0o644)
		ceph.rbdCmd(t, append(argv, staging+"/"+file)...)
		chownOneadmin(t, staging)
		out := h.mustDriver(t, "restic", "backup", backupArgs("hv1", vm.id, ""), backupStdin(ds, vmXML(vm.id, "")), vm.env2...)
		m := replyRe.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("backup of a legacy chain printed %q", out)
		}
		chain = append(chain, inc{k, m[1]})
		os.RemoveAll(staging)
	}
	ceph.rbdCmd(t, "snap", "create", img+"@one_backup_0")
	ceph.rbdCmd(t, "snap", "protect", img+"@one_backup_0")
	legacy(0, "disk.0.rbd2", "export", "--export-format", "2", img+"@one_backup_0")
	cephWrites(t, vm, 0)
	ceph.rbdCmd(t, "snap", "create", img+"@one_backup_1")
	ceph.rbdCmd(t, "snap", "protect", img+"@one_backup_1")
	legacy(1, "disk.0.1.rbdiff", "export-diff", "--from-snap", "one_backup_0", img+"@one_backup_1")
	ceph.rbdCmd(t, "snap", "unprotect", img+"@one_backup_0")
	ceph.rbdCmd(t, "snap", "rm", img+"@one_backup_0")
	cephWrites(t, vm, 1)

	// Our increment 2 continues the chain in its format.
	r := env.tm(t, "ceph", "prebackup", vm.tmArgs("0"), vm.xml(cfg(1)), vm.env2...)
	if r.code != 0 {
		t.Fatalf("prebackup: %s", r.stderr)
	}
	if names := dirNames(t, stagingOf(vm.id)); strings.Join(names, " ") != "disk.0.2.rbdiff sha256sums vm.xml" {
		t.Fatalf("staged %v, want disk.0.2.rbdiff, sha256sums and vm.xml", names)
	}
	out := h.mustDriver(t, "restic", "backup", backupArgs("hv1", vm.id, ""), backupStdin(ds, vmXML(vm.id, "")), vm.env2...)
	m := replyRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("backup printed %q", out)
	}
	chain = append(chain, inc{2, m[1]})
	if r := env.tm(t, "ceph", "postbackup", vm.tmArgs("0"), vm.xml(cfg(1)), vm.env2...); r.code != 0 {
		t.Fatalf("postbackup: %s", r.stderr)
	}
	vm.checkAnchors(t, 0, "one_backup_2")
	want := ceph.export(t, vm.disk(0).rbd+"@one_backup_2", filepath.Join(vm.tmp, "export.2"))

	// Restore as the Ceph image datastore does: import the base with its snapshots, then each
	// diff in numeric order.
	var parts []string
	for _, it := range chain {
		parts = append(parts, fmt.Sprintf("%d:%s", it.id, it.snap))
	}
	url := fmt.Sprintf("restic+rbd://%d//%s%s/disk.0.2.rbdiff", dsID, strings.Join(parts, ","), stagingOf(vm.id))
	bundle := h.download(t, "restic", url, onedWithDatastores(t, map[int]string{dsID: ds}))
	files := untar(t, bundle, filepath.Join(vm.tmp, "bundle"))
	if strings.Join(files, " ") != "disk.0.1.rbdiff disk.0.2.rbdiff disk.0.rbd2" {
		t.Fatalf("bundle holds %v", files)
	}
	restored := "restored-" + strconv.Itoa(vid)
	ceph.removeImage(t, restored)
	ceph.rbdCmd(t, "import", "--export-format", "2", filepath.Join(vm.tmp, "bundle/disk.0.rbd2"), ceph.pool+"/"+restored)
	t.Cleanup(func() { ceph.removeImage(t, restored) })
	for _, f := range []string{"disk.0.1.rbdiff", "disk.0.2.rbdiff"} {
		ceph.rbdCmd(t, "import-diff", filepath.Join(vm.tmp, "bundle", f), ceph.pool+"/"+restored)
	}
	sameDisk(t, ceph.export(t, restored, filepath.Join(vm.tmp, "restored.raw")), want, "legacy chain imported")
}

// untar extracts a tar.gz into dir (by base name) and lists the names.
func untar(t *testing.T, file, dir string) []string {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	var names []string
	for name, data := range readTarGz(t, file) {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(name)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, filepath.Base(name))
	}
	sort.Strings(names)
	chownOneadmin(t, dir)
	return names
}

// TestCephFlatten: increment_flatten (KEEP_LAST=2) of a restic chain of four points made from a
// Ceph disk; every kept point restores to its snapshot.
func TestCephFlatten(t *testing.T) {
	env := needKVM(t)
	needCeph(t)
	vid, dsID := 708, 478
	base := resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := cephVM(t, env, vid, 64)
	var chain []inc
	var exports []string
	for k := 0; k < 4; k++ {
		chain = append(chain, inc{k, vm.backupRound(t, ds, bcfg{mode: "INCREMENT", li: k - 1, tmMad: "ceph", disks: "0"})})
		exports = append(exports, ceph.export(t, fmt.Sprintf("%s@one_backup_%d", vm.disk(0).rbd, k), filepath.Join(vm.tmp, fmt.Sprintf("export.%d", k))))
		cephWrites(t, vm, k)
	}
	img := imageXML(18, vid, "", chain, "")
	out := h.mustDriver(t, "restic", "increment_flatten", []string{"18"}, flattenStdin(img, ds, 2))
	m := regexp.MustCompile(`^([0-9]+) (2:[0-9a-f]{8},3:[0-9a-f]{8})\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("flatten printed %q, want \"<size_mb> 2:<new>,3:<id>\"", out)
	}
	kept := parseChain(t, m[2])
	for i, k := range []int{2, 3} {
		sameDisk(t, resticRestore(t, base+"/"+strconv.Itoa(vid), vid, kept[:i+1], 0), exports[k], fmt.Sprintf("point %d after flatten", k))
	}
	denv := onedWithDatastores(t, map[int]string{dsID: ds})
	url := fmt.Sprintf("restic://%d//2:%s,3:%s%s/disk.0.3", dsID, kept[0].snap, kept[1].snap, stagingOf(vid))
	sameDisk(t, h.download(t, "restic", url, denv), exports[3], url)
}

// TestCephLXC: a powered-off LXC container on Ceph (an ext4 file system with a marker) is
// backed up and restored byte for byte; a live backup is refused with the row's reason.
func TestCephLXC(t *testing.T) {
	env := needLXC(t)
	needCeph(t)
	vid, dsID := 709, 479
	resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := cephVM(t, env, vid, 64)
	fs := filepath.Join(vm.tmp, "rootfs.raw")
	run(t, "truncate", "-s", "64M", fs)
	run(t, "mkfs.ext4", "-q", "-F", fs)
	marker := "ceph-lxc-" + randomHex(4)
	os.WriteFile(filepath.Join(vm.tmp, "marker"), []byte(marker+"\n"), 0o644)
	run(t, "debugfs", "-w", "-R", "write "+filepath.Join(vm.tmp, "marker")+" marker", fs)
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", fs, ceph.qemu(vm.disk(0).rbd))

	live := bcfg{mode: "FULL", li: -1, live: true, tmMad: "ceph", vmMad: "lxc", disks: "0"}
	r := env.tm(t, "ceph", "prebackup_live", vm.tmArgs("0"), vm.xml(live))
	if r.code == 0 || !strings.Contains(r.stderr, "LXC ceph: full live backup not supported: LXC containers on this storage can be backed up only while powered off") {
		t.Fatalf("live LXC Ceph backup: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(stagingOf(vid)); err == nil {
		t.Errorf("a refused prebackup left %s", stagingOf(vid))
	}
	vm.checkAnchors(t, 0)

	id := vm.backupRound(t, ds, bcfg{mode: "FULL", li: -1, tmMad: "ceph", vmMad: "lxc", disks: "0"})
	vm.checkAnchors(t, 0)
	url := fmt.Sprintf("restic://%d//0:%s%s/disk.0.0", dsID, id, stagingOf(vid))
	got := h.download(t, "restic", url, onedWithDatastores(t, map[int]string{dsID: ds}))
	restored := filepath.Join(vm.tmp, "restored.raw")
	run(t, "qemu-img", "convert", "-O", "raw", got, restored)
	if out, err := runErr("cmp", restored, fs); err != nil {
		t.Fatalf("the restored disk differs from the container's disk: %s", out)
	}
	// debugfs reads the file system in the image without mounting it (its banner goes to stderr).
	if out, err := exec.Command("debugfs", "-R", "cat marker", restored).Output(); err != nil || strings.TrimSpace(string(out)) != marker {
		t.Errorf("restored marker %q (%v), want %q", out, err, marker)
	}
}

// TestCephKVMBridge: with LAST_BRIDGE (the backup datastore has BRIDGE_LIST) the VM's host
// suspends the VM, snapshots and captures the vTPM state; the bridge exports and stages, and the
// datastore uploads from there (W-15, W-16). The traces of both hosts' sessions show who ran what.
func TestCephKVMBridge(t *testing.T) {
	env := needKVM(t)
	needCeph(t).defineSecret(t)
	vid, dsID := 710, 480
	base := resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := cephVM(t, env, vid, 64)
	os.MkdirAll(vm.dir+"/tpm", 0o755)
	os.WriteFile(vm.dir+"/tpm/tpm2-00.permall", []byte("vTPM state of VM "+strconv.Itoa(vid)), 0o600)
	chownOneadmin(t, vm.dir)
	vm.start(t)
	replyRe := regexp.MustCompile(`^([0-9a-f]{8}) [0-9]+ raw\n$`)
	var chain []inc
	var exports []string
	for k := 0; k < 2; k++ {
		vm.write(t, 0, 0x60+k, int64(k)<<20, 64<<10)
		c := bcfg{mode: "INCREMENT", li: k - 1, live: true, freeze: "SUSPEND", tpm: true, tmMad: "ceph", disks: "0",
			extraConfig: "<LAST_BRIDGE>hv2</LAST_BRIDGE>"}
		stop1, stop2 := traceHost(t, "hv1"), traceHost(t, "hv2")
		r := env.tm(t, "ceph", "prebackup_live", vm.tmArgs("0"), vm.xml(c))
		onHost, onBridge := stop1(), stop2()
		if r.code != 0 {
			t.Fatalf("prebackup %d with a bridge: %s", k, r.stderr)
		}
		checkSplit(t, onHost, onBridge)
		if names := dirNames(t, stagingOf(vid)); strings.Join(names, " ") != fmt.Sprintf("disk.0.%d disk.tpm.0 sha256sums vm.xml", k) {
			t.Fatalf("staged %v", names)
		}
		out := h.mustDriver(t, "restic", "backup", backupArgs("hv1", vid, ""), backupStdin(ds, vmXMLOn(vid, "hv2", "ceph")))
		m := replyRe.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("backup printed %q", out)
		}
		chain = append(chain, inc{k, m[1]})
		if r := env.tm(t, "ceph", "postbackup_live", vm.tmArgs("0"), vm.xml(c)); r.code != 0 || strings.Contains(r.stderr, "WARNING") {
			t.Fatalf("postbackup %d: %s", k, r.stderr)
		}
		vm.checkClean(t)
		vm.checkAnchors(t, 0, fmt.Sprintf("one_backup_%d", k))
		exports = append(exports, ceph.export(t, fmt.Sprintf("%s@one_backup_%d", vm.disk(0).rbd, k), filepath.Join(vm.tmp, fmt.Sprintf("export.%d", k))))
	}
	denv := onedWithDatastores(t, map[int]string{dsID: ds})
	for k := range chain {
		url := cephURL(vm, dsID, base, chain, 0, k)
		sameDisk(t, h.download(t, "restic", url, denv), exports[k], url)
	}
	tpm := h.restic(t, fmt.Sprintf("%s/%d", base, vid), "dump", "--quiet", chain[1].snap, stagingOf(vid)+"/disk.tpm.0")
	files := untar(t, writeTemp(t, tpm), filepath.Join(vm.tmp, "tpm"))
	if got, _ := os.ReadFile(filepath.Join(vm.tmp, "tpm/tpm2-00.permall")); len(files) != 1 || string(got) != "vTPM state of VM "+strconv.Itoa(vid) {
		t.Errorf("the stored vTPM state holds %v: %q", files, got)
	}
}

func writeTemp(t *testing.T, data string) string {
	p := filepath.Join(t.TempDir(), "data")
	os.WriteFile(p, []byte(data), 0o644)
	return p
}

// checkSplit reads the traces of the VM's host and of the bridge: the host ran the point phase
// and no export; the bridge ran the export (qemu-img) and never talked to libvirt.
func checkSplit(t *testing.T, onHost, onBridge string) {
	t.Helper()
	execs := func(trace string) []string {
		var out []string
		for _, line := range strings.Split(trace, "\n") {
			if strings.Contains(line, "execve(") && !strings.Contains(line, "ENOENT") {
				out = append(out, line)
			}
		}
		return out
	}
	has := func(lines []string, subs ...string) bool {
		for _, l := range lines {
			all := true
			for _, s := range subs {
				all = all && strings.Contains(l, s)
			}
			if all {
				return true
			}
		}
		return false
	}
	host, bridge := execs(onHost), execs(onBridge)
	if !has(host, "onebackup-host", `"--phase", "point"`) || has(host, "qemu-img") {
		t.Errorf("the VM's host did not run just the point phase:\n%s", strings.Join(host, "\n"))
	}
	if !has(bridge, "onebackup-host", `"--phase", "export"`) || !has(bridge, `"qemu-img"`) {
		t.Errorf("the bridge did not export:\n%s", strings.Join(bridge, "\n"))
	}
	for _, line := range strings.Split(onBridge, "\n") {
		if strings.Contains(line, "connect(") && strings.Contains(line, "libvirt") {
			t.Errorf("the bridge talked to libvirt: %s", line)
		}
	}
}

// TestCephInPlaceRestore: `onevm restore` of a powered-off VM on Ceph puts the disk's image back
// as it was at the chosen increment: a new image is written, renamed over the old one, and the
// old one goes with its snapshots; the next backup starts a chain.
func TestCephInPlaceRestore(t *testing.T) {
	env := needKVM(t)
	needCeph(t)
	vid, dsID, imgID := 712, 481, 45
	base := resetDS(t, dsID)
	ds := resticDS(dsID, nil)
	vm := cephVM(t, env, vid, 64)
	name := vm.disk(0).rbd
	cfg := bcfg{mode: "INCREMENT", tmMad: "ceph", disks: "0"}
	var chain []inc
	var exports []string
	for k := 0; k < 2; k++ {
		cfg.li = k - 1
		chain = append(chain, inc{k, vm.backupRound(t, ds, cfg)})
		exports = append(exports, ceph.export(t, fmt.Sprintf("%s@one_backup_%d", name, k), filepath.Join(vm.tmp, fmt.Sprintf("export.%d", k))))
		cephWrites(t, vm, k)
	}
	oned := restoreOned(t, vm.xml(cfg), imgID, imageXML(imgID, vid, "", chain, ""), dsID, ds)
	if r := env.tm(t, "ceph", "restore", restoreArgs("hv1", vm, imgID, 0, -1), nil, oned...); r.code != 0 {
		t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
	}
	sameDisk(t, ceph.export(t, name, filepath.Join(vm.tmp, "restored.raw")), exports[0], "the restored image")
	vm.checkAnchors(t, 0)
	if images := ceph.rbdCmd(t, "ls", ceph.pool); strings.Contains(images, "restore") {
		t.Errorf("the restore left images: %s", images)
	}
	vm.checkNoRestoreLeft(t)
	// The shadow follows the restore; the next backup starts a chain and restores.
	run(t, "cp", "--sparse=always", exports[0], vm.disk(0).shadow)
	want := vm.expect(t, "after")
	cfg.li = -1
	id := vm.backupRound(t, ds, cfg)
	url := cephURL(vm, dsID, base, []inc{{0, id}}, 0, 0)
	sameDisk(t, h.download(t, "restic", url, onedWithDatastores(t, map[int]string{dsID: ds})), want[0], url)
}
