package test

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"onebackup/internal/one"
	"onebackup/internal/oned/onedtest"
)

// The S3 tests run the restic datastore against two real S3 servers on loopback, started by the
// harness: Ceph's radosgw (plain HTTP, test/harness/ceph.sh) and versitygw (HTTPS with a CA of
// its own, test/harness/s3.sh). Each datastore keeps its repositories under a prefix of the
// server's bucket that is new for every test process, so that runs never see each other's data.

type s3Server struct {
	name     string
	endpoint string // as RESTIC_S3_ENDPOINT
	access   string
	secret   string
	bucket   string
	cacert   string // "" for plain HTTP
	wrongCA  string // an unrelated CA ("" for plain HTTP)
	pidFile  string
	// objects lists the object names of the bucket (to prove that a failure left nothing).
	objects func(t testing.TB) []string
}

var (
	s3Once sync.Once
	s3List []*s3Server
	s3Err  error
	s3Run  = randomHex(4) // this process's prefix in the buckets
)

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

const (
	cephState = "/tmp/onebackup-ceph"
	s3State   = "/tmp/onebackup-s3"
)

// needS3 starts both servers once per test process; TestMain stops them.
func needS3(t *testing.T) []*s3Server {
	t.Helper()
	s3Once.Do(func() { s3List, s3Err = startS3() })
	if s3Err != nil {
		t.Fatalf("S3 harness: %v", s3Err)
	}
	return s3List
}

func startS3() ([]*s3Server, error) {
	cephOnce.Do(func() { ceph, cephErr = startCeph() })
	if cephErr != nil {
		return nil, cephErr
	}
	for _, s := range [][]string{
		{"test/harness/setup-versitygw.sh"},
		{"test/harness/s3.sh", "start", s3State},
	} {
		cmd := exec.Command(filepath.Join(h.repo, s[0]), s[1:]...)
		cmd.Dir = h.repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	afterTests = append(afterTests, stopS3)
	ceph, err := one.LoadConf(filepath.Join(cephState, "env"))
	if err != nil {
		return nil, err
	}
	vgw, err := one.LoadConf(filepath.Join(s3State, "env"))
	if err != nil {
		return nil, err
	}
	rgw := &s3Server{name: "radosgw", endpoint: ceph["RGW_ENDPOINT"], access: ceph["RGW_ACCESS_KEY"], secret: ceph["RGW_SECRET_KEY"],
		bucket: "onebackup", pidFile: filepath.Join(cephState, "run/client.rgw.gw.pid")}
	rgw.objects = func(t testing.TB) []string {
		out, err := exec.Command("radosgw-admin", "-c", ceph["CEPH_CONF"], "bucket", "list", "--bucket="+rgw.bucket).Output()
		if err != nil {
			t.Fatalf("radosgw-admin bucket list: %v", err)
		}
		var objs []struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(out, &objs); err != nil {
			t.Fatalf("radosgw-admin bucket list: %v: %s", err, out)
		}
		var names []string
		for _, o := range objs {
			names = append(names, o.Name)
		}
		return names
	}
	v := &s3Server{name: "versitygw", endpoint: vgw["S3_ENDPOINT"], access: vgw["S3_ACCESS_KEY"], secret: vgw["S3_SECRET_KEY"],
		bucket: vgw["S3_BUCKET"], cacert: vgw["S3_CACERT"], wrongCA: vgw["S3_WRONG_CACERT"], pidFile: filepath.Join(s3State, "versitygw.pid")}
	v.objects = func(t testing.TB) []string {
		// The posix backend keeps a bucket as a directory and its objects as files.
		var names []string
		root := filepath.Join(s3State, "data", v.bucket)
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				rel, _ := filepath.Rel(root, p)
				names = append(names, rel)
			}
			return nil
		})
		return names
	}
	for _, s := range []*s3Server{rgw, v} {
		if s.endpoint == "" || s.access == "" || s.secret == "" || s.bucket == "" {
			return nil, fmt.Errorf("%s: incomplete harness env: %+v", s.name, s)
		}
		// restic creates a missing bucket when it creates a repository there; the drivers
		// refuse to, so the bucket is made here with a throwaway repository.
		probe := "s3:" + s.endpoint + "/" + s.bucket + "/probe-" + s3Run
		args := append(s.flags(), "--repo="+probe, "init")
		cmd := exec.Command(filepath.Join(h.repo, ".cache/bin/restic"), args...)
		cmd.Env = append(os.Environ(), s.env()...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: creating bucket %s: %v\n%s", s.name, s.bucket, err, out)
		}
	}
	return []*s3Server{rgw, v}, nil
}

func stopS3() {
	exec.Command(filepath.Join(h.repo, "test/harness/s3.sh"), "stop", s3State).Run()
}

// env is what restic needs to reach the server by hand.
func (s *s3Server) env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.access, "AWS_SECRET_ACCESS_KEY=" + s.secret, "RESTIC_PASSWORD=" + resticPassword}
}

func (s *s3Server) flags() []string {
	f := []string{"--option=s3.bucket-lookup=path"}
	if s.cacert != "" {
		f = append(f, "--cacert="+s.cacert)
	}
	return f
}

// prefix is where datastore id keeps its repositories in this test process.
func (s *s3Server) prefix(id int) string { return fmt.Sprintf("%s/%s-ds%d", s.bucket, s3Run, id) }

// repo is the restic address of a repository of datastore id ("42", "job_7").
func (s *s3Server) repo(id int, name string) string {
	return "s3:" + s.endpoint + "/" + s.prefix(id) + "/" + name
}

// ds is a restic datastore on this server.
func (s *s3Server) ds(id int, extra dsAttrs) string {
	attrs := dsAttrs{"RESTIC_BACKEND": "S3", "RESTIC_PASSWORD": resticPassword, "RESTIC_S3_ACCESS_KEY_ID": s.access,
		"RESTIC_S3_SECRET_ACCESS_KEY": s.secret, "RESTIC_S3_BUCKET": s.prefix(id), "RESTIC_S3_ENDPOINT": s.endpoint,
		"RESTIC_S3_FORCE_PATH_STYLE": "YES"}
	if s.cacert != "" {
		attrs["RESTIC_S3_CACERT"] = s.cacert
	}
	for k, v := range extra {
		if v == "" {
			delete(attrs, k)
		} else {
			attrs[k] = v
		}
	}
	return datastoreXML(id, "restic", attrs)
}

// onedImagePool serves one.imagepool.info with the given pool (for S3 monitor).
func onedImagePool(t *testing.T, pool string) []string {
	t.Helper()
	return onedServing(t, func(c onedtest.Call) onedtest.Reply {
		if c.Method == "one.imagepool.info" {
			return onedtest.OK(pool)
		}
		return onedtest.Fail("unexpected call " + c.Method)
	})
}

// TestResticS3 runs every action of the restic datastore against each S3 server with the checks
// the SFTP tests make: a chain of backups restored point by point (byte for byte), backup-job
// repositories, ls, stat, monitor, the downloader, restore, increment_flatten and rm.
func TestResticS3(t *testing.T) {
	for i, s := range needS3(t) {
		t.Run(s.name, func(t *testing.T) {
			dsID, vmID := 460+10*i, 620+10*i
			ds := s.ds(dsID, nil)
			c := newDiskChain(t, vmID, 2)
			var incs []inc
			for p := 0; p < 4; p++ {
				c.next(t, stagingOf(vmID))
				incs = append(incs, inc{p, h.resticBackup(t, ds, "hv1", vmID, "", "")})
			}
			repo := s.repo(dsID, fmt.Sprint(vmID))
			if n := len(h.snapshots(t, repo)); n != 4 {
				t.Fatalf("repository %s holds %d snapshots, want 4", repo, n)
			}
			for p := range incs {
				for d := 0; d < 2; d++ {
					sameDisk(t, resticRestore(t, repo, vmID, incs[:p+1], d), c.refs[p][d], fmt.Sprintf("restore point %d disk %d", p, d))
				}
			}

			img := imageXML(40, vmID, "", incs, "")
			stdin := backupStdin(ds, vmXML(vmID, "")+img)
			prefix := fmt.Sprintf("/var/lib/one/datastores/0/%d/backup/", vmID)
			var urls map[string]string
			if err := json.Unmarshal([]byte(h.mustDriver(t, "restic", "ls", []string{"-i", "2"}, stdin)), &urls); err != nil {
				t.Fatal(err)
			}
			chain := fmt.Sprintf("0:%s,1:%s,2:%s", incs[0].snap, incs[1].snap, incs[2].snap)
			if want := fmt.Sprintf("restic://%d//%s%sdisk.1.2", dsID, chain, prefix); urls["1"] != want {
				t.Errorf("ls -i 2: disk 1 is %q, want %q", urls["1"], want)
			}
			env := onedWithDatastores(t, map[int]string{dsID: ds})
			for d := 0; d < 2; d++ {
				sameDisk(t, h.download(t, "restic", urls[fmt.Sprint(d)], env), c.refs[2][d], "downloader, point 2")
			}
			stat := fmt.Sprintf("<IMAGE><PATH><![CDATA[%s]]></PATH></IMAGE>", urls["0"])
			if got := h.mustDriver(t, "restic", "stat", []string{"9"}, dsMadStdin(stat, ds)); got != "64\n" {
				t.Errorf("stat printed %q, want 64", got)
			}

			// monitor: used = the datastore's backup images as oned knows them, total = TOTAL_MB.
			pool := fmt.Sprintf(`<IMAGE_POOL><IMAGE><ID>1</ID><TYPE>6</TYPE><DATASTORE_ID>%d</DATASTORE_ID><SIZE>300</SIZE></IMAGE>`+
				`<IMAGE><ID>2</ID><TYPE>6</TYPE><DATASTORE_ID>%d</DATASTORE_ID><SIZE>77</SIZE></IMAGE>`+
				`<IMAGE><ID>3</ID><TYPE>6</TYPE><DATASTORE_ID>999</DATASTORE_ID><SIZE>5000</SIZE></IMAGE></IMAGE_POOL>`, dsID, dsID)
			mon := h.mustDriver(t, "restic", "monitor", []string{fmt.Sprint(dsID)}, dsMadStdin(s.ds(dsID, dsAttrs{"TOTAL_MB": "1000"})), onedImagePool(t, pool)...)
			if mon != "USED_MB=377\nTOTAL_MB=1000\nFREE_MB=623\n" {
				t.Errorf("monitor printed %q", mon)
			}

			// A backup job's repository.
			stageBackup(t, stagingOf(vmID), vmID, 0, []int{16}, 2)
			jid := h.resticBackup(t, ds, "hv1", vmID, "7", "")
			if snaps := h.snapshots(t, s.repo(dsID, "job_7")); len(snaps) != 1 || snaps[0].ID[:8] != jid {
				t.Errorf("job repository holds %+v, want %s", snaps, jid)
			}

			// increment_flatten keeps the last 2 points, restorable byte for byte.
			out := h.mustDriver(t, "restic", "increment_flatten", []string{"40"}, flattenStdin(img, ds, 2))
			m := regexp.MustCompile(`^([0-9]+) (2:[0-9a-f]{8},3:[0-9a-f]{8})\n$`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("flatten printed %q", out)
			}
			kept := parseChain(t, m[2])
			for p := 2; p <= 3; p++ {
				for d := 0; d < 2; d++ {
					sameDisk(t, resticRestore(t, repo, vmID, kept[:p-1], d), c.refs[p][d], fmt.Sprintf("flattened point %d", p))
				}
			}

			// rm of the flattened image's points empties the per-VM repository.
			h.mustDriver(t, "restic", "rm", []string{"40"}, dsMadStdin(imageXML(40, vmID, "", kept, ""), ds))
			if snaps := h.snapshots(t, repo); len(snaps) != 0 {
				t.Errorf("after rm the repository holds %+v", snaps)
			}

			restoreScenario(t, "restic", ds, dsID, vmID,
				func(jobID string) string { return h.resticBackup(t, ds, "hv1", vmID, jobID, "") },
				func(string) string { return fmt.Sprintf("/var/lib/one/datastores/0/%d/backup", vmID) }, true)
		})
	}
}

// TestResticS3SecretNeverExposed watches every process's command line while a backup to S3 runs:
// the secret key must never appear there (the server's own process excepted), nor in any
// output or log.
func TestResticS3SecretNeverExposed(t *testing.T) {
	s := needS3(t)[1]
	st := stageBackup(t, stagingOf(640), 640, 0, []int{64}, 16)
	ds := s.ds(480, dsAttrs{"RESTIC_BWLIMIT": "8192"}) // about 2 s of upload to watch
	server, _ := os.ReadFile(s.pidFile)
	serverPid, _ := strconv.Atoi(strings.TrimSpace(string(server)))
	done := watchCmdlines(s.secret, serverPid) // the server itself was started with its keys
	r := h.driver(t, "restic", "backup", append(backupArgs("hv1", 640, ""), "-v"), backupStdin(ds, vmXML(640, "")))
	seen := done()
	if r.code != 0 {
		t.Fatalf("backup failed: %s", r.stderr)
	}
	if len(seen) > 0 {
		t.Errorf("the secret key appeared in command lines:\n%s", strings.Join(seen, "\n"))
	}
	if strings.Contains(r.stdout+r.stderr, s.secret) {
		t.Errorf("the secret key appears in the driver's output")
	}
	if !strings.Contains(r.stderr, "AWS_SECRET_ACCESS_KEY=***") {
		t.Errorf("verbose log does not show the masked environment: %s", r.stderr)
	}
	h.checkSnapshot(t, s.repo(480, "640"), strings.Fields(r.stdout)[0], 640, st)
	dry := h.driver(t, "restic", "backup", append(backupArgs("hv1", 640, ""), "--dry-run"), backupStdin(ds, vmXML(640, "")))
	if dry.code != 0 || strings.Contains(dry.stdout+dry.stderr, s.secret) {
		t.Errorf("dry run: exit %d, secret shown %v: %s", dry.code, strings.Contains(dry.stdout+dry.stderr, s.secret), dry.stderr)
	}
}

// TestResticS3Errors: what an operator gets wrong gives one line naming the cause, and leaves
// nothing in the bucket (no lock, no half repository).
func TestResticS3Errors(t *testing.T) {
	servers := needS3(t)
	stageBackup(t, stagingOf(641), 641, 0, []int{8}, 1)
	cases := []struct {
		name   string
		server *s3Server
		attrs  dsAttrs
		want   string
	}{
		{"wrong secret key", servers[0], dsAttrs{"RESTIC_S3_SECRET_ACCESS_KEY": "wrong" + servers[0].secret}, "refused the datastore's S3 keys"},
		{"wrong access key", servers[1], dsAttrs{"RESTIC_S3_ACCESS_KEY_ID": "NOSUCHKEY"}, "refused the datastore's S3 keys"},
		{"missing bucket", servers[0], dsAttrs{"RESTIC_S3_BUCKET": "nosuch-" + s3Run}, "bucket nosuch-" + s3Run + " does not exist"},
		{"endpoint unreachable", servers[0], dsAttrs{"RESTIC_S3_ENDPOINT": "http://127.0.0.1:1"}, "cannot reach S3 endpoint 127.0.0.1:1"},
		{"unknown CA", servers[1], dsAttrs{"RESTIC_S3_CACERT": ""}, "not trusted"},
		{"wrong CA", servers[1], dsAttrs{"RESTIC_S3_CACERT": servers[1].wrongCA}, "not trusted"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dsID := 490 + i
			before := c.server.objects(t)
			start := time.Now()
			r := h.driver(t, "restic", "backup", backupArgs("hv1", 641, ""), backupStdin(c.server.ds(dsID, c.attrs), vmXML(641, "")))
			if r.code == 0 || !oneFailure(r.stderr, c.want) {
				t.Errorf("exit %d, stderr %q, want one line with %q", r.code, r.stderr, c.want)
			}
			t.Logf("failed in %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(r.stderr))
			if strings.Contains(r.stderr, c.server.secret) {
				t.Errorf("the secret key is in the message")
			}
			if after := c.server.objects(t); len(after) != len(before) {
				t.Errorf("the failed backup left objects in bucket %s: %d before, %d after", c.server.bucket, len(before), len(after))
			}
		})
	}
	// With RESTIC_S3_INSECURE_TLS=YES and no CA the same server works.
	s := servers[1]
	stageBackup(t, stagingOf(641), 641, 0, []int{8}, 1)
	h.resticBackup(t, s.ds(499, dsAttrs{"RESTIC_S3_CACERT": "", "RESTIC_S3_INSECURE_TLS": "YES"}), "hv1", 641, "", "")
}
