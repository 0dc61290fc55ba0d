package backend

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"onebackup/internal/chain"
	"onebackup/internal/one"
	"onebackup/internal/validate"
	"onebackup/internal/vmtemplate"
)

// OnedAPI is what restore asks oned, acting as the user who requested the restore.
type OnedAPI interface {
	ImageAllocate(ctx context.Context, template string, dsID int) (int, error)
	TemplateAllocate(ctx context.Context, template string) (int, error)
	ImageDelete(ctx context.Context, id int) error
}

// Impersonator returns a client of oned acting as user.
type Impersonator func(user string) (OnedAPI, error)

// RestoreBudget is how long restore may keep creating objects. oned stops waiting for the
// driver after 180 s and reports the restore as failed (W14); past this budget the restore
// stops and deletes what it created rather than leave objects of a "failed" restore behind.
var RestoreBudget = 165 * time.Second

// rollbackTimeout bounds the deletion of created images after a failure (it runs even when the
// action's context was cancelled by SIGTERM).
const rollbackTimeout = 60 * time.Second

// maxTPMState bounds the vTPM state tarball put in the template.
const maxTPMState = 16 << 20

// restoreDisk is one disk file of the restore point.
type restoreDisk struct {
	id   int
	path string
}

// restoreRequest is the decoded TEMPLATE of a restore message.
type restoreRequest struct {
	user        string
	dstDS       int
	name        string
	noIP, noNIC bool
	incr        *int
	disk        *int
}

func parseRestoreRequest(msg *one.Message) (*restoreRequest, error) {
	r := &restoreRequest{user: msg.Text("TEMPLATE/USERNAME"), name: msg.Text("TEMPLATE/NAME")}
	dst := msg.Text("DESTINATION_DS_ID")
	if r.user == "" || dst == "" {
		return nil, errors.New("restore request lacks TEMPLATE/USERNAME or DESTINATION_DS_ID")
	}
	var err error
	if r.dstDS, err = validate.ID("DESTINATION_DS_ID", dst); err != nil {
		return nil, err
	}
	r.noIP = strings.EqualFold(msg.Text("TEMPLATE/NO_IP"), "YES")
	r.noNIC = strings.EqualFold(msg.Text("TEMPLATE/NO_NIC"), "YES")
	if s := msg.Text("TEMPLATE/INCREMENT_ID"); s != "" {
		n, err := validate.ID("INCREMENT_ID", s)
		if err != nil {
			return nil, err
		}
		r.incr = &n
	}
	if s := msg.Text("TEMPLATE/DISK_ID"); s != "" {
		n, err := validate.ID("DISK_ID", s)
		if err != nil {
			return nil, err
		}
		r.disk = &n
	}
	return r, nil
}

// Restore is the restore action (spec §5.3): one image per disk of the restore point and,
// unless a single disk was asked for, a VM template using them. It returns
// "<template_id|-1> <image_id>…". On failure every image it created is deleted again and the
// error says which were deleted (or could not be).
func Restore(ctx context.Context, rt *Runtime, open Opener, msg *one.Message, impersonate Impersonator) (string, error) {
	start := time.Now()
	req, err := parseRestoreRequest(msg)
	if err != nil {
		return "", err
	}
	r, err := openImage(msg, rt, open)
	if err != nil {
		return "", err
	}
	c, snap := r.chain, r.chain.Last()
	if req.incr != nil {
		it, ok := r.chain.Find(*req.incr)
		if !ok {
			return "", fmt.Errorf("backup image has no increment %d (it holds %s)", *req.incr, r.chain)
		}
		c, snap = r.chain.UpTo(*req.incr), it
	}

	files, err := r.store.Files(ctx, r.loc, snap.Snap)
	if err != nil {
		return "", err
	}
	disks, tpm, err := classifyFiles(files)
	if err != nil {
		return "", fmt.Errorf("backup %s: %v", snap.Snap, err)
	}
	if len(disks) == 0 {
		return "", fmt.Errorf("backup %s does not contain any disks", snap.Snap)
	}
	stored, err := r.store.ReadVMXML(ctx, r.loc, snap.Snap, disks[0].path)
	if err != nil {
		return "", fmt.Errorf("cannot fetch vm.xml of backup %s: %w", snap.Snap, err)
	}
	vm, err := vmtemplate.Decode(stored)
	if err != nil {
		return "", fmt.Errorf("backup %s: %v", snap.Snap, err)
	}
	if req.disk != nil {
		var sel []restoreDisk
		for _, d := range disks {
			if d.id == *req.disk {
				sel = append(sel, d)
			}
		}
		if len(sel) == 0 {
			return "", fmt.Errorf("backup %s has no disk %d (disks: %s)", snap.Snap, *req.disk, diskList(disks))
		}
		disks = sel
	}

	base := req.name
	if base == "" {
		vmID := vm.ID
		if vmID < 0 {
			vmID = r.loc.VMID
		}
		base = fmt.Sprintf("%d-%s", vmID, snap.Snap)
	}

	// Everything that can fail without oned is done before the first object is created.
	var images []string
	for _, d := range disks {
		u := chain.URL{Backend: r.store.Backend(), RBD: r.rbd, DSID: r.dsID, JobID: r.loc.JobID, Chain: c, Path: d.path}
		t, err := imageTemplate(base, d.id, u, r.dsID, r.loc.JobID)
		if err != nil {
			return "", err
		}
		images = append(images, t)
	}
	opts := vmtemplate.Options{Name: base, NoIP: req.noIP, NoNIC: req.noNIC, Images: map[string]string{}}
	if req.disk == nil {
		if tpm != "" {
			if opts.TPMState, err = readTPM(ctx, r, snap.Snap, tpm); err != nil {
				return "", err
			}
		}
		for _, d := range disks {
			opts.Images[strconv.Itoa(d.id)] = fmt.Sprintf("<image of disk %d>", d.id)
		}
		if _, _, err := vm.Generate(opts); err != nil {
			return "", err
		}
	}

	if rt.DryRun {
		for i, t := range images {
			rt.Planf("would allocate in datastore %d, as %s, the image of disk %d:\n%s", req.dstDS, req.user, disks[i].id, t)
		}
		if req.disk == nil {
			t, warnings, _ := vm.Generate(opts)
			for _, w := range warnings {
				rt.Log.Warn(w)
			}
			rt.Planf("would allocate, as %s, the VM template:\n%s", req.user, t)
		}
		return "", nil
	}

	api, err := impersonate(req.user)
	if err != nil {
		return "", err
	}
	// No answer from oned past the point where it stopped waiting for this driver is useful.
	ctx, cancel := context.WithDeadline(ctx, start.Add(RestoreBudget+10*time.Second))
	defer cancel()
	var created []int
	for i, t := range images {
		if spent := time.Since(start); spent > RestoreBudget {
			return "", rollback(api, created, fmt.Errorf("restore stopped after %s, before the image of disk %d: oned stops waiting at 180 s", spent.Round(time.Second), disks[i].id))
		}
		id, err := api.ImageAllocate(ctx, t, req.dstDS)
		if err != nil {
			return "", rollback(api, created, fmt.Errorf("cannot create the image of disk %d: %w", disks[i].id, err))
		}
		rt.Log.Infof("restored disk %d of backup %s as image %d", disks[i].id, snap.Snap, id)
		created = append(created, id)
	}
	tmplID := -1
	if req.disk == nil {
		for i, d := range disks {
			opts.Images[strconv.Itoa(d.id)] = strconv.Itoa(created[i])
		}
		t, warnings, err := vm.Generate(opts)
		if err != nil {
			return "", rollback(api, created, err)
		}
		for _, w := range warnings {
			rt.Log.Warn(w)
		}
		if spent := time.Since(start); spent > RestoreBudget {
			return "", rollback(api, created, fmt.Errorf("restore stopped after %s, before the VM template: oned stops waiting at 180 s", spent.Round(time.Second)))
		}
		if tmplID, err = api.TemplateAllocate(ctx, t); err != nil {
			return "", rollback(api, created, fmt.Errorf("cannot create the VM template: %w", err))
		}
	}
	out := []string{strconv.Itoa(tmplID)}
	for _, id := range created {
		out = append(out, strconv.Itoa(id))
	}
	return strings.Join(out, " "), nil
}

// classifyFiles splits the files of a restore point into disks (disk.<n>.…, ordered by disk id)
// and the vTPM state document (disk.tpm.0); anything else is ignored.
func classifyFiles(files []string) ([]restoreDisk, string, error) {
	var disks []restoreDisk
	tpm := ""
	seen := map[int]string{}
	for _, f := range files {
		name := path.Base(f)
		idx := chain.DiskIndex(name)
		switch {
		case idx == "":
			continue
		case idx == "tpm":
			if name == "disk.tpm.0" {
				tpm = f
			}
			continue
		}
		id, err := strconv.Atoi(idx)
		if err != nil {
			continue
		}
		if prev, ok := seen[id]; ok {
			return nil, "", fmt.Errorf("two files for disk %d: %s and %s", id, prev, f)
		}
		seen[id] = f
		disks = append(disks, restoreDisk{id: id, path: f})
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].id < disks[j].id })
	return disks, tpm, nil
}

func diskList(disks []restoreDisk) string {
	var ids []string
	for _, d := range disks {
		ids = append(ids, strconv.Itoa(d.id))
	}
	return strings.Join(ids, ", ")
}

// imageTemplate is the template of the image restored from one disk (spec §5.3.1).
func imageTemplate(base string, diskID int, u chain.URL, dsID int, jobID string) (string, error) {
	typ := "DATABLOCK"
	if diskID == 0 {
		typ = "OS"
	}
	attrs := [][2]string{
		{"NAME", fmt.Sprintf("%s-disk-%d", base, diskID)},
		{"TYPE", typ},
		{"PATH", u.String()},
		{"FROM_BACKUP_DS", strconv.Itoa(dsID)},
	}
	if jobID != "" {
		attrs = append(attrs, [2]string{"BACKUP_JOB_ID", jobID})
	}
	var b strings.Builder
	for _, a := range attrs {
		q, err := vmtemplate.Quote(a[1])
		if err != nil {
			return "", fmt.Errorf("invalid image %s %q: %v", a[0], a[1], err)
		}
		fmt.Fprintf(&b, "%s = %s\n", a[0], q)
	}
	return b.String(), nil
}

// limitedBuffer fails writes beyond max bytes.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.Len()+len(p) > l.max {
		return 0, fmt.Errorf("larger than %d MiB", l.max>>20)
	}
	return l.Buffer.Write(p)
}

var _ io.Writer = (*limitedBuffer)(nil)

// readTPM returns the base64 of the vTPM state stored in the restore point.
func readTPM(ctx context.Context, r *imageRequest, snap, file string) (string, error) {
	fr, ok := r.store.(FileReader)
	if !ok {
		return "", fmt.Errorf("backup %s holds a vTPM state (%s), but the %s backend cannot read stored files yet", snap, path.Base(file), r.store.Backend())
	}
	buf := &limitedBuffer{max: maxTPMState}
	if err := fr.ReadFile(ctx, r.loc, snap, file, buf); err != nil {
		return "", fmt.Errorf("cannot read the vTPM state of backup %s: %w", snap, err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes()), nil
}

// rollback deletes the images a failed restore created and says so in the error.
func rollback(api OnedAPI, created []int, cause error) error {
	if len(created) == 0 {
		return fmt.Errorf("%w; no image was created", cause)
	}
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	var deleted, kept []string
	for i := len(created) - 1; i >= 0; i-- {
		id := created[i]
		if err := api.ImageDelete(ctx, id); err != nil {
			kept = append([]string{fmt.Sprintf("%d (%v)", id, err)}, kept...)
		} else {
			deleted = append([]string{strconv.Itoa(id)}, deleted...)
		}
	}
	msg := ""
	if len(deleted) > 0 {
		msg += fmt.Sprintf("; images created by this restore were deleted: %s", strings.Join(deleted, ", "))
	}
	if len(kept) > 0 {
		msg += fmt.Sprintf("; images created by this restore could NOT be deleted, remove them by hand: %s", strings.Join(kept, ", "))
	}
	return fmt.Errorf("%w%s", cause, msg)
}
