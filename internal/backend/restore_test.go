package backend

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"onebackup/internal/one"
)

// fakeStore is a restic-like Store over an in-memory map snap -> path -> content.
type fakeStore struct {
	snaps map[string]map[string]string
	loc   Location
}

func (f *fakeStore) Backend() string { return "restic" }
func (f *fakeStore) PrepareUpload(context.Context, *Backup) (*Upload, error) {
	return nil, errors.New("not here")
}
func (f *fakeStore) Files(_ context.Context, loc Location, snap string) ([]string, error) {
	f.loc = loc
	s, ok := f.snaps[snap]
	if !ok {
		return nil, fmt.Errorf("no snapshot %s", snap)
	}
	var out []string
	for p := range s {
		out = append(out, p)
	}
	return out, nil
}
func (f *fakeStore) ReadVMXML(_ context.Context, _ Location, snap, disk string) ([]byte, error) {
	doc, ok := f.snaps[snap][disk[:strings.LastIndex(disk, "/")]+"/vm.xml"]
	if !ok {
		return nil, errors.New("no vm.xml")
	}
	return []byte(doc), nil
}
func (f *fakeStore) Remove(context.Context, Location, []string) error { return nil }
func (f *fakeStore) Usage(context.Context) (Usage, error)             { return Usage{}, nil }

// readerStore adds FileReader.
type readerStore struct{ *fakeStore }

func (r readerStore) ReadFile(_ context.Context, _ Location, snap, p string, w io.Writer) error {
	c, ok := r.snaps[snap][p]
	if !ok {
		return errors.New("no such file")
	}
	_, err := io.WriteString(w, c)
	return err
}

// fakeAPI records calls and fails the n-th image allocation when failAt > 0.
type fakeAPI struct {
	user      string
	images    []string
	templates []string
	deleted   []int
	failAt    int
	failTmpl  bool
	failDel   bool
	next      int
}

func (a *fakeAPI) ImageAllocate(_ context.Context, t string, ds int) (int, error) {
	if ds != 1 {
		return -1, fmt.Errorf("wrong datastore %d", ds)
	}
	a.images = append(a.images, t)
	if len(a.images) == a.failAt {
		return -1, errors.New("[one.image.allocate] Not enough space")
	}
	a.next++
	return 200 + a.next, nil
}
func (a *fakeAPI) TemplateAllocate(_ context.Context, t string) (int, error) {
	a.templates = append(a.templates, t)
	if a.failTmpl {
		return -1, errors.New("[one.template.allocate] quota")
	}
	return 57, nil
}
func (a *fakeAPI) ImageDelete(_ context.Context, id int) error {
	if a.failDel && id == 201 {
		return errors.New("image locked")
	}
	a.deleted = append(a.deleted, id)
	return nil
}

const dir = "/var/lib/one/datastores/0/42/backup/"

func vmxml(disks string) string {
	return base64.StdEncoding.EncodeToString([]byte("<VM><ID>42</ID><TEMPLATE>" + disks +
		"<NIC><IP>10.0.0.1</IP><MAC>02:00</MAC><NETWORK>pub</NETWORK></NIC></TEMPLATE><USER_TEMPLATE/></VM>"))
}

func newFake() *fakeStore {
	disks := "<DISK><DISK_ID>0</DISK_ID><IMAGE_ID>5</IMAGE_ID><TYPE>FILE</TYPE></DISK><DISK><DISK_ID>1</DISK_ID><IMAGE_ID>6</IMAGE_ID><TYPE>FILE</TYPE></DISK>"
	return &fakeStore{snaps: map[string]map[string]string{
		"1a2b3c4d": {dir + "disk.0.0": "", dir + "disk.1.0": "", dir + "vm.xml": vmxml(disks)},
		"5e6f7a8b": {dir + "disk.0.1": "", dir + "disk.1.1": "", dir + "vm.xml": vmxml(disks)},
		"9c0d1e2f": {dir + "disk.1.2": "", dir + "disk.0.2": "", dir + "disk.tpm.0": "tpm-bytes", dir + "vm.xml": vmxml(disks)},
	}}
}

func restoreMsg(t *testing.T, tmpl, format string) *one.Message {
	t.Helper()
	img := `<IMAGE><ID>9</ID><FORMAT>` + format + `</FORMAT><SOURCE>1a2b3c4d</SOURCE><BACKUP_INCREMENTS>` +
		`<INCREMENT><ID>0</ID><SOURCE>1a2b3c4d</SOURCE></INCREMENT><INCREMENT><ID>1</ID><SOURCE>5e6f7a8b</SOURCE></INCREMENT>` +
		`<INCREMENT><ID>2</ID><SOURCE>9c0d1e2f</SOURCE></INCREMENT></BACKUP_INCREMENTS><VMS><ID>42</ID></VMS>` +
		`<TEMPLATE><BACKUP_JOB_ID>7</BACKUP_JOB_ID></TEMPLATE></IMAGE>`
	ds := `<DATASTORE><ID>100</ID><DS_MAD>restic</DS_MAD><TEMPLATE/></DATASTORE>`
	raw := "<DS_DRIVER_ACTION_DATA>" + img + ds + "<DESTINATION_DS_ID>1</DESTINATION_DS_ID><TEMPLATE>" + tmpl + "</TEMPLATE></DS_DRIVER_ACTION_DATA>"
	m, err := one.ParseMessage([]byte(base64.StdEncoding.EncodeToString([]byte(raw))))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func runRestore(t *testing.T, store Store, api *fakeAPI, tmpl, format string, dry bool) (string, string, error) {
	t.Helper()
	var logs, plan bytes.Buffer
	log := logrus.New()
	log.SetOutput(&logs)
	rt := &Runtime{DryRun: dry, Plan: &plan, Log: log}
	open := func(*one.Datastore, *Runtime) (Store, error) { return store, nil }
	imp := func(user string) (OnedAPI, error) { api.user = user; return api, nil }
	out, err := Restore(context.Background(), rt, open, restoreMsg(t, tmpl, format), imp)
	if dry {
		return out, plan.String(), err
	}
	return out, logs.String(), err
}

func TestRestoreFull(t *testing.T) {
	api := &fakeAPI{}
	out, _, err := runRestore(t, readerStore{newFake()}, api, "<NAME>web</NAME><NO_IP>yes</NO_IP><USERNAME>alice</USERNAME>", "raw", false)
	if err != nil {
		t.Fatal(err)
	}
	if out != "57 201 202" || api.user != "alice" {
		t.Fatalf("stdout %q user %q", out, api.user)
	}
	chain := "0:1a2b3c4d,1:5e6f7a8b,2:9c0d1e2f"
	for i, want := range []string{
		"NAME = \"web-disk-0\"\nTYPE = \"OS\"\nPATH = \"restic://100/7/" + chain + dir + "disk.0.2\"\nFROM_BACKUP_DS = \"100\"\nBACKUP_JOB_ID = \"7\"\n",
		"NAME = \"web-disk-1\"\nTYPE = \"DATABLOCK\"\nPATH = \"restic://100/7/" + chain + dir + "disk.1.2\"\nFROM_BACKUP_DS = \"100\"\nBACKUP_JOB_ID = \"7\"\n",
	} {
		if api.images[i] != want {
			t.Errorf("image %d template:\n%s\nwant:\n%s", i, api.images[i], want)
		}
	}
	want := "NAME= \"web\"\nDISK=[\n    IMAGE_ID=\"201\"\n]\nDISK=[\n    IMAGE_ID=\"202\"\n]\nNIC=[\n    NETWORK=\"pub\"\n]\nTPM_STATE= \"" +
		base64.StdEncoding.EncodeToString([]byte("tpm-bytes")) + "\"\n"
	if len(api.templates) != 1 || api.templates[0] != want {
		t.Errorf("VM template:\n%q\nwant:\n%q", api.templates, want)
	}
}

func TestRestoreIncrementAndDisk(t *testing.T) {
	api := &fakeAPI{}
	out, _, err := runRestore(t, newFake(), api, "<INCREMENT_ID>1</INCREMENT_ID><DISK_ID>1</DISK_ID><USERNAME>bob</USERNAME>", "rbd", false)
	if err != nil {
		t.Fatal(err)
	}
	if out != "-1 201" || len(api.templates) != 0 {
		t.Fatalf("stdout %q, templates %d", out, len(api.templates))
	}
	want := "NAME = \"42-5e6f7a8b-disk-1\"\nTYPE = \"DATABLOCK\"\nPATH = \"restic+rbd://100/7/0:1a2b3c4d,1:5e6f7a8b" + dir + "disk.1.1\"\nFROM_BACKUP_DS = \"100\"\nBACKUP_JOB_ID = \"7\"\n"
	if len(api.images) != 1 || api.images[0] != want {
		t.Errorf("image template:\n%q\nwant:\n%q", api.images, want)
	}
	// Increment 1 has no TPM, the last one has: without DISK_ID the rsync-like store (no
	// FileReader) refuses before creating anything.
	api = &fakeAPI{}
	_, _, err = runRestore(t, newFake(), api, "<USERNAME>bob</USERNAME>", "raw", false)
	if err == nil || !strings.Contains(err.Error(), "cannot read stored files") || len(api.images) != 0 {
		t.Errorf("TPM without FileReader: %v, %d images", err, len(api.images))
	}
	api = &fakeAPI{}
	out, _, err = runRestore(t, newFake(), api, "<INCREMENT_ID>0</INCREMENT_ID><USERNAME>bob</USERNAME>", "raw", false)
	if err != nil || out != "57 201 202" {
		t.Errorf("increment 0 without TPM: %q %v", out, err)
	}
}

func TestRestoreRequestErrors(t *testing.T) {
	cases := []struct{ tmpl, want string }{
		{"<NAME>x</NAME>", "USERNAME or DESTINATION_DS_ID"},
		{"<USERNAME>a</USERNAME><INCREMENT_ID>7</INCREMENT_ID>", "no increment 7"},
		{"<USERNAME>a</USERNAME><INCREMENT_ID>x</INCREMENT_ID>", "invalid INCREMENT_ID"},
		{"<USERNAME>a</USERNAME><DISK_ID>4</DISK_ID>", "has no disk 4 (disks: 0, 1)"},
		{"<USERNAME>a</USERNAME><NAME>bad\\</NAME>", "backslash"},
	}
	for _, c := range cases {
		api := &fakeAPI{}
		_, _, err := runRestore(t, readerStore{newFake()}, api, c.tmpl, "raw", false)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.tmpl, err, c.want)
		}
		if len(api.images)+len(api.templates) != 0 {
			t.Errorf("%s: oned was called", c.tmpl)
		}
	}
}

func TestRestoreRollback(t *testing.T) {
	api := &fakeAPI{failAt: 2}
	_, _, err := runRestore(t, readerStore{newFake()}, api, "<USERNAME>a</USERNAME>", "raw", false)
	if err == nil || len(api.deleted) != 1 || api.deleted[0] != 201 {
		t.Fatalf("error %v, deleted %v", err, api.deleted)
	}
	want := "cannot create the image of disk 1: [one.image.allocate] Not enough space; images created by this restore were deleted: 201"
	if err.Error() != want {
		t.Errorf("error %q\nwant %q", err, want)
	}

	api = &fakeAPI{failTmpl: true, failDel: true}
	_, _, err = runRestore(t, readerStore{newFake()}, api, "<USERNAME>a</USERNAME>", "raw", false)
	want = "cannot create the VM template: [one.template.allocate] quota; images created by this restore were deleted: 202; " +
		"images created by this restore could NOT be deleted, remove them by hand: 201 (image locked)"
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant %q", err, want)
	}

	api = &fakeAPI{failAt: 1}
	_, _, err = runRestore(t, readerStore{newFake()}, api, "<USERNAME>a</USERNAME>", "raw", false)
	if err == nil || !strings.HasSuffix(err.Error(), "no image was created") {
		t.Errorf("first allocation failing: %v", err)
	}

	old := RestoreBudget
	RestoreBudget = -1
	defer func() { RestoreBudget = old }()
	api = &fakeAPI{}
	_, _, err = runRestore(t, readerStore{newFake()}, api, "<USERNAME>a</USERNAME>", "raw", false)
	if err == nil || !strings.Contains(err.Error(), "oned stops waiting") || len(api.images) != 0 {
		t.Errorf("over budget: %v, %d images", err, len(api.images))
	}
}

func TestRestoreDryRun(t *testing.T) {
	api := &fakeAPI{}
	out, plan, err := runRestore(t, readerStore{newFake()}, api, "<USERNAME>a</USERNAME>", "raw", true)
	if err != nil || out != "" || len(api.images) != 0 || api.user != "" {
		t.Fatalf("dry run: %q %v, api %+v", out, err, api)
	}
	for _, s := range []string{"image of disk 0", "42-9c0d1e2f-disk-1", `IMAGE_ID="<image of disk 1>"`, "TPM_STATE"} {
		if !strings.Contains(plan, s) {
			t.Errorf("plan lacks %q:\n%s", s, plan)
		}
	}
}

func TestClassifyFiles(t *testing.T) {
	disks, tpm, err := classifyFiles([]string{"/a/vm.xml", "/a/disk.10.0", "/a/disk.2.0", "/a/disk.tpm.0", "/a/other"})
	if err != nil || tpm != "/a/disk.tpm.0" || len(disks) != 2 || disks[0].id != 2 || disks[1].id != 10 {
		t.Errorf("classify: %+v %q %v", disks, tpm, err)
	}
	if _, _, err := classifyFiles([]string{"/a/disk.0.0", "/a/disk.0.1"}); err == nil {
		t.Error("two files of one disk accepted")
	}
}
