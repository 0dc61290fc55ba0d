package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkResticChain measures, for a 1 GiB disk (512 MiB of data) with 3 increments of 32 MiB:
//   - restoring the last increment through restic_downloader.rb (prepare, stream, clean) against
//     a plain `restic restore` of the same four snapshots (no merge);
//   - increment_flatten of the whole chain into one (KEEP_LAST 1) against the reference's method
//     run by hand (dump every piece, rebase, qemu-img commit, restic backup, forget --prune).
//
// Run: cd test && go test -run '^$' -bench ResticChain -benchtime 1x .
func BenchmarkResticChain(b *testing.B) {
	base := resetDS(b, 140)
	ds := resticDS(140, nil)
	stage := stagingOf(90)
	work := b.TempDir()
	live := filepath.Join(work, "live")
	run(b, "qemu-img", "create", "-q", "-f", "qcow2", live, "1G")
	run(b, "sh", "-c", "head -c 512M /dev/urandom > "+work+"/data")
	run(b, "qemu-img", "dd", "-f", "raw", "-O", "qcow2", "if="+work+"/data", "of="+live, "bs=1M", "count=512")
	os.Remove(work + "/data")
	var incs []inc
	prev := ""
	for p := 0; p < 4; p++ {
		stageBackup(b, stage, 90, p, []int{}, 0)
		staged := filepath.Join(stage, fmt.Sprintf("disk.0.%d", p))
		if p == 0 {
			run(b, "qemu-img", "convert", "-O", "qcow2", live, staged)
		} else {
			run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-b", prev, "-F", "qcow2", staged)
			run(b, "sh", "-c", fmt.Sprintf("head -c 32M /dev/urandom > %s/chunk", work))
			io := fmt.Sprintf("write -s %s/chunk %dM 32M", work, 100*p)
			run(b, "qemu-io", "-c", io, staged)
			run(b, "qemu-img", "rebase", "-u", "-b", "", staged)
		}
		prev = filepath.Join(work, fmt.Sprintf("point.%d", p))
		run(b, "cp", staged, prev)
		if p > 0 {
			run(b, "qemu-img", "rebase", "-u", "-F", "qcow2", "-b", filepath.Join(work, fmt.Sprintf("point.%d", p-1)), prev)
		}
		chownOneadmin(b, stage)
		incs = append(incs, inc{p, h.resticBackup(b, ds, "hv1", 90, "", "")})
	}
	repo := base + "/90"
	run(b, "cp", "-a", repo, base+"/90-copy")
	env := onedWithDatastores(b, map[int]string{140: ds})
	var chain []string
	for _, it := range incs {
		chain = append(chain, fmt.Sprintf("%d:%s", it.id, it.snap))
	}
	url := fmt.Sprintf("restic://140//%s%s/disk.0.3", strings.Join(chain, ","), stage)

	b.ResetTimer()
	t0 := time.Now()
	out := h.download(b, "restic", url, env)
	restore := time.Since(t0)
	b.StopTimer()
	sameDisk(b, out, prev, "downloaded chain")

	target := filepath.Join("/var/tmp", "bench-restore")
	os.RemoveAll(target)
	os.MkdirAll(target, 0o755)
	chownOneadmin(b, target)
	t0 = time.Now()
	for _, it := range incs {
		h.restic(b, repo, "restore", it.snap, "--target", filepath.Join(target, it.snap))
	}
	plain := time.Since(t0)
	os.RemoveAll(target)

	img := imageXML(40, 90, "", incs, "")
	t0 = time.Now()
	h.mustDriver(b, "restic", "increment_flatten", []string{"40"}, flattenStdin(img, ds, 1))
	flatten := time.Since(t0)

	// The reference's method, by hand, on the copy of the repository.
	copyRepo := base + "/90-copy"
	dir := filepath.Join("/var/tmp", "bench-flatten", "90", "backup")
	os.RemoveAll(filepath.Join("/var/tmp", "bench-flatten"))
	os.MkdirAll(dir, 0o755)
	chownOneadmin(b, filepath.Join("/var/tmp", "bench-flatten"))
	t0 = time.Now()
	var files []string
	for _, it := range incs {
		f := filepath.Join(dir, fmt.Sprintf("disk.0.%d", it.id))
		h.asOneadmin(b, []string{"RESTIC_PASSWORD=" + resticPassword}, "sh", "-c",
			`"$0" --repo="$1" dump --quiet "$2" "$3" > "$4"`, "/var/lib/one/remotes/datastore/restic/restic",
			"sftp:oneadmin@bk1:"+copyRepo, it.snap, fmt.Sprintf("%s/disk.0.%d", stage, it.id), f)
		if len(files) > 0 {
			h.asOneadmin(b, nil, "qemu-img", "rebase", "-u", "-F", "qcow2", "-b", files[len(files)-1], f)
		}
		files = append(files, f)
	}
	h.asOneadmin(b, nil, "qemu-img", "commit", "-q", "-f", "qcow2", "-b", files[0], files[len(files)-1])
	os.Rename(files[0], files[len(files)-1]+".merged")
	h.restic(b, copyRepo, "backup", files[len(files)-1]+".merged", "--force", "--json", "--tag=one-90")
	h.restic(b, copyRepo, append(append([]string{"forget"}, snapsOf(incs)...), "--prune", "--max-unused=0")...)
	byHand := time.Since(t0)
	os.RemoveAll(filepath.Join("/var/tmp", "bench-flatten"))
	os.RemoveAll(copyRepo)

	b.ReportMetric(restore.Seconds(), "downloader-s")
	b.ReportMetric(plain.Seconds(), "plain-restic-restore-s")
	b.ReportMetric(flatten.Seconds(), "flatten-s")
	b.ReportMetric(byHand.Seconds(), "reference-flatten-by-hand-s")
}

func snapsOf(incs []inc) []string {
	var out []string
	for _, it := range incs {
		out = append(out, it.snap)
	}
	return out
}
