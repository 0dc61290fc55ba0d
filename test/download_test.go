package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"onebackup/internal/oned/onedtest"
)

// onedWithDatastores serves one.datastore.info for the given DATASTORE elements (by id) and writes the
// credentials the drivers read; it returns the environment for a driver run.
func onedWithDatastores(t testing.TB, datastores map[int]string) []string {
	t.Helper()
	return onedServing(t, func(c onedtest.Call) onedtest.Reply {
		if c.Method == "one.datastore.info" {
			if ds, ok := datastores[c.Int(1)]; ok {
				return onedtest.OK(ds)
			}
			return onedtest.Fail(fmt.Sprintf("[one.datastore.info] Error getting datastore [%d].", c.Int(1)))
		}
		return onedtest.Fail("unexpected call " + c.Method)
	})
}

// onedServing starts an oned answering with handle and writes the credentials the drivers read;
// it returns the environment for a driver run.
func onedServing(t testing.TB, handle func(onedtest.Call) onedtest.Reply) []string {
	t.Helper()
	srv := onedtest.New(handle)
	t.Cleanup(srv.Close)
	f, err := os.CreateTemp("/var/lib/one", "test-one_auth-")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("oneadmin:testpass\n")
	f.Close()
	auth := f.Name()
	chownOneadmin(t, auth)
	t.Cleanup(func() { os.Remove(auth) })
	return []string{"ONE_XMLRPC=" + srv.URL, "ONE_AUTH=" + auth}
}

// download runs <backend>_downloader.rb the way downloader.sh does: keep its command= and
// clean_command= lines, evaluate them, run the command once to sniff the type and once for the
// data, then run the clean command.
func (h *harness) download(t testing.TB, backend, url string, env []string) string {
	t.Helper()
	out, r := h.tryDownload(t, backend, url, env)
	if r.code != 0 {
		t.Fatalf("download of %s failed (exit %d): %s", url, r.code, r.stderr)
	}
	return out
}

// tryDownload is download for a download that may fail: it returns the image's path and how the
// downloader.sh-like script ended.
func (h *harness) tryDownload(t testing.TB, backend, url string, env []string) (string, result) {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "download-test-")
	if err != nil {
		t.Fatal(err)
	}
	chownOneadmin(t, dir)
	t.Cleanup(func() { os.RemoveAll(dir) })
	out := filepath.Join(dir, "image")
	script := `set -o pipefail
lines=$("$HELPER" "$URL" | grep -E '^(command|clean_command)=') || { echo "no command from the helper" >&2; exit 1; }
printf '%s\n' "$lines" >"$OUT.lines"
eval "$lines"
eval "$command" | head -c 1024 >/dev/null || true
eval "$command" >"$OUT" || { echo "Error copying" >&2; exit 255; }
eval "$clean_command"`
	helper := filepath.Join(h.repo, "drivers", backend+"_downloader.rb")
	r := h.asOneadminResult(t, append(env, "HELPER="+helper, "URL="+url, "OUT="+out), "bash", "-c", script)
	// What the preparation left must be gone once clean_command ran.
	lines, _ := os.ReadFile(out + ".lines")
	if m := regexp.MustCompile(`clean_command=".*'(/[^']+)'"`).FindSubmatch(lines); m != nil {
		if _, err := os.Stat(string(m[1])); err == nil {
			t.Errorf("clean_command left %s", m[1])
		}
	}
	return out, r
}

func TestResticDownloaderRestoresChain(t *testing.T) {
	base := resetDS(t, 125)
	ds := resticDS(125, nil)
	c := newDiskChain(t, 56, 2)
	var incs []inc
	for i := 0; i < 4; i++ {
		c.next(t, stagingOf(56))
		incs = append(incs, inc{i, h.resticBackup(t, ds, "hv1", 56, "", "")})
	}
	env := onedWithDatastores(t, map[int]string{125: ds})
	chain := func(n int) string {
		var parts []string
		for _, it := range incs[:n+1] {
			parts = append(parts, fmt.Sprintf("%d:%s", it.id, it.snap))
		}
		return strings.Join(parts, ",")
	}
	for _, point := range []int{3, 1, 0} {
		for d := 0; d < 2; d++ {
			url := fmt.Sprintf("restic://125//%s/var/lib/one/datastores/0/56/backup/disk.%d.%d", chain(point), d, point)
			sameDisk(t, h.download(t, "restic", url, env), c.refs[point][d], url)
		}
	}
	// As the TM restore does it: ls, then each URL through the downloader.
	img := imageXML(15, 56, "", incs, "")
	for _, point := range []int{-1, 1} {
		var urls map[string]string
		out := h.mustDriver(t, "restic", "ls", []string{"-i", fmt.Sprint(point)}, backupStdin(ds, vmXML(56, "")+img))
		if err := json.Unmarshal([]byte(out), &urls); err != nil || len(urls) != 2 {
			t.Fatalf("ls -i %d printed %q", point, out)
		}
		want := point
		if point < 0 {
			want = 3
		}
		for d := 0; d < 2; d++ {
			sameDisk(t, h.download(t, "restic", urls[fmt.Sprint(d)], env), c.refs[want][d], "ls -i "+fmt.Sprint(point))
		}
	}
	_ = base
}

func TestResticDownloaderRefusesHostileURLs(t *testing.T) {
	resetDS(t, 126)
	ds := resticDS(126, nil)
	stageBackup(t, stagingOf(57), 57, 0, []int{8}, 1)
	id := h.resticBackup(t, ds, "hv1", 57, "", "")
	env := onedWithDatastores(t, map[int]string{126: ds})
	good := "/var/lib/one/datastores/0/57/backup/disk.0.0"
	cases := map[string]string{
		"restic://126//0:" + id + "/var/lib/one/datastores/0/57/../57/backup/disk.0.0": "'..' is not allowed",
		"restic://126//0:" + id + ";touch /tmp/pwned" + good:                           "invalid restic snapshot id",
		"restic://126//0:" + id + "/var/lib/one/datastores/0/57/backup/disk.0.0'":      "characters outside",
		"restic://126//0:" + id + "\n" + good:                                          "invalid restic snapshot id",
		"ftp://126//0:" + id + good:                                                    "unknown scheme",
		"restic://12a//0:" + id + good:                                                 "invalid datastore id",
		"restic://126/x/0:" + id + good:                                                "invalid backup job id",
		"restic://126//0:" + id + "/etc/shadow":                                        "not a disk file",
		"restic://126//0:" + id + "/var/lib/one/datastores/0/57/backup/vm.xml":         "not a disk file",
		"restic://126//x:" + id + good:                                                 "invalid chain item",
	}
	for url, want := range cases {
		t.Run(url, func(t *testing.T) {
			h.refusedPath(t, filepath.Join(h.repo, "drivers", "restic_downloader.rb"), []string{url}, nil, want, env...)
		})
	}
	// Well-formed URLs that do not name a disk of that VM's backup: refused after checking the
	// repository, and no command line is printed.
	other := strings.Replace(good, "/57/", "/58/", 1)
	for url, want := range map[string]string{
		"restic://126//0:" + id + other:                                            "does not exist",
		"restic://126//0:" + id + strings.Replace(good, "disk.0.0", "disk.1.0", 1): "is not a file of backup",
		"restic://999//0:" + id + good:                                             "cannot read datastore 999",
	} {
		r := h.driverAt(t, filepath.Join(h.repo, "drivers", "restic_downloader.rb"), []string{url}, nil, env...)
		if r.code == 0 || strings.Contains(r.stdout, "command=") || !strings.Contains(r.stderr, want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q (want %q)", url, r.code, r.stdout, r.stderr, want)
		}
	}
	if _, err := os.Stat("/tmp/pwned"); err == nil {
		t.Errorf("an injected command ran")
	}
	_ = regexp.MustCompile
}

func TestRsyncDownloaderRefusesHostileURLs(t *testing.T) {
	base := resetDS(t, 217)
	ds := rsyncDS(217, nil)
	env := onedWithDatastores(t, map[int]string{217: ds})
	good := base + "/76/abc123/disk.0.0"
	drv := filepath.Join(h.repo, "drivers", "rsync_downloader.rb")
	for url, want := range map[string]string{
		"rsync://217//0:abc123" + base + "/76/abc123/../abc123/disk.0.0": "'..' is not allowed",
		"rsync://217//0:abc;23" + good:                                   "invalid rsync snapshot id",
		"rsync://217//0:abc123" + good + "'":                             "characters outside",
		"rsync://217//0:abc123\n" + good:                                 "invalid rsync snapshot id",
		"sftp://217//0:abc123" + good:                                    "unknown scheme",
		"rsync://217/1 2/0:abc123" + good:                                "invalid backup job id",
		"rsync://217//0:abc123/etc/passwd":                               "not a disk file",
		"rsync://217//0:abc123/var/lib/one/datastores/217/76/abc123":     "not a disk file",
	} {
		t.Run(url, func(t *testing.T) { h.refusedPath(t, drv, []string{url}, nil, want, env...) })
	}
	// Well-formed, but outside BASE_PATH or in another backup's directory: refused before any
	// command line is printed.
	for url, want := range map[string]string{
		"rsync://217//0:abc123/tmp/217/76/abc123/disk.0.0":              "is not a file of backup",
		"rsync://217//0:abc123,1:def456" + base + "/76/abc123/disk.0.1": "is not a file of backup",
	} {
		r := h.driverAt(t, drv, []string{url}, nil, env...)
		if r.code == 0 || strings.Contains(r.stdout, "command=") || !strings.Contains(r.stderr, want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q (want %q)", url, r.code, r.stdout, r.stderr, want)
		}
	}
}
