package test

import (
	"archive/tar"
	"compress/gzip"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// These fixtures are laid out by hand as the reference drivers lay them out (specification §3),
// without this project's backup action: restic repositories per VM (<BASE>/<vm>) and per backup
// job (<BASE>/job_<id>) holding the staged files under their absolute paths with tag one-<vm>,
// and rsync trees <BASE>/<vm>/<6 hex>/. Old backups must restore through our downloaders.

// referenceResticBackup stores the staging directory of a VM as the reference's backup does.
func (h *harness) referenceResticBackup(t *testing.T, repo string, vmID int) string {
	t.Helper()
	stage := stagingOf(vmID)
	entries, _ := os.ReadDir(stage)
	args := []string{"backup"}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "disk.") {
			args = append(args, filepath.Join(stage, e.Name()))
		}
	}
	args = append(args, filepath.Join(stage, "vm.xml"), "--force", "--json", fmt.Sprintf("--tag=one-%d", vmID))
	out := h.restic(t, repo, args...)
	id := summaryOf(t, out)
	return id[:8]
}

func summaryOf(t *testing.T, out string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, `"message_type":"summary"`) {
			i := strings.Index(l, `"snapshot_id":"`)
			return l[i+15 : i+15+64]
		}
	}
	t.Fatalf("no summary in %q", out)
	return ""
}

func TestCompatReferenceResticRepositories(t *testing.T) {
	base := resetDS(t, 127)
	ds := resticDS(127, nil)
	env := onedWithDatastores(t, map[int]string{127: ds})
	for _, tc := range []struct {
		vmID  int
		job   string
		repo  string
		inURL string
	}{{59, "", "/59", ""}, {61, "9", "/job_9", "9"}} {
		h.restic(t, base+tc.repo, "init")
		c := newDiskChain(t, tc.vmID, 2)
		var chain []string
		for p := 0; p < 3; p++ {
			c.next(t, stagingOf(tc.vmID))
			chain = append(chain, fmt.Sprintf("%d:%s", p, h.referenceResticBackup(t, base+tc.repo, tc.vmID)))
			for d := 0; d < 2; d++ {
				url := fmt.Sprintf("restic://127/%s/%s%s/disk.%d.%d", tc.inURL, strings.Join(chain, ","), stagingOf(tc.vmID), d, p)
				sameDisk(t, h.download(t, "restic", url, env), c.refs[p][d], url)
			}
		}
	}
}

func TestCompatReferenceRsyncTree(t *testing.T) {
	base := resetDS(t, 215)
	env := onedWithDatastores(t, map[int]string{215: rsyncDS(215, nil)})
	c := newDiskChain(t, 75, 1)
	var chain []string
	ids := []string{"0e6658", "a1b2c3", "ff0099"}
	for p, id := range ids {
		c.next(t, stagingOf(75))
		dir := fmt.Sprintf("%s/75/%s", base, id)
		run(t, "mkdir", "-p", dir)
		run(t, "cp", "-a", stagingOf(75)+"/.", dir+"/")
		chownOneadmin(t, base)
		chain = append(chain, fmt.Sprintf("%d:%s", p, id))
		url := fmt.Sprintf("rsync://215//%s%s/disk.0.%d", strings.Join(chain, ","), dir, p)
		sameDisk(t, h.download(t, "rsync", url, env), c.refs[p][0], url)
	}
}

// Legacy Ceph chains (FORMAT rbd): the downloaders serve a tar.gz of the .rbd2 base and the
// .rbdiff increments, which the Ceph image datastore imports.
func TestCompatLegacyRBDChains(t *testing.T) {
	rbase := resetDS(t, 128)
	sbase := resetDS(t, 216)
	rds, sds := resticDS(128, nil), rsyncDS(216, nil)
	env := onedWithDatastores(t, map[int]string{128: rds, 216: sds})
	h.restic(t, rbase+"/62", "init")
	pieces := map[string][]byte{}
	var rchain, schain []string
	for p := 0; p < 3; p++ {
		stage := stageBackup(t, stagingOf(62), 62, p, nil, 0)
		name := "disk.0.rbd2"
		if p > 0 {
			name = fmt.Sprintf("disk.0.%d.rbdiff", p)
		}
		data := make([]byte, 64<<10)
		rand.Read(data)
		pieces[name] = data
		os.WriteFile(filepath.Join(stage.dir, name), data, 0o644)
		chownOneadmin(t, stage.dir)
		rchain = append(rchain, fmt.Sprintf("%d:%s", p, h.referenceResticBackup(t, rbase+"/62", 62)))
		id := fmt.Sprintf("%06x", 0xabc000+p)
		dir := fmt.Sprintf("%s/62/%s", sbase, id)
		run(t, "mkdir", "-p", dir)
		run(t, "cp", "-a", stage.dir+"/.", dir+"/")
		chownOneadmin(t, sbase)
		schain = append(schain, fmt.Sprintf("%d:%s", p, id))
		if p == 2 {
			checkBundle(t, h.download(t, "restic", fmt.Sprintf("restic+rbd://128//%s%s/%s", strings.Join(rchain, ","), stagingOf(62), name), env), pieces)
			checkBundle(t, h.download(t, "rsync", fmt.Sprintf("rsync+rbd://216//%s%s/%s", strings.Join(schain, ","), dir, name), env), pieces)
		}
	}
}

// checkBundle verifies a tar.gz holds exactly the pieces, by base name.
func checkBundle(t *testing.T, file string, pieces map[string][]byte) {
	t.Helper()
	got := readTarGz(t, file)
	for name, data := range got {
		if want, ok := pieces[name]; !ok || string(want) != string(data) {
			t.Errorf("bundle entry %s does not match the stored piece", name)
		}
	}
	if len(got) != len(pieces) {
		t.Errorf("bundle holds %d entries, want %d", len(got), len(pieces))
	}
}

// readTarGz reads the regular files of a tar.gz, by name.
func readTarGz(t *testing.T, file string) map[string][]byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("not a gzip stream: %v", err)
	}
	tr := tar.NewReader(gz)
	out := map[string][]byte{}
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if hd.Typeflag == tar.TypeDir {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[hd.Name] = data
	}
}
