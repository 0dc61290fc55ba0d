package backend

import (
	"context"
	"fmt"
	"path"
	"regexp"
	"strconv"

	"onebackup/internal/chain"
	"onebackup/internal/one"
)

// imageRequest is what rm, ls and flatten read from a message holding a backup image.
type imageRequest struct {
	store Store
	dsID  int
	loc   Location
	chain chain.Chain
	rbd   bool
}

var legacyPathVMRe = regexp.MustCompile(`/([0-9]+)/backup/[^/]+$`)

func openImage(msg *one.Message, rt *Runtime, open Opener) (*imageRequest, error) {
	ds, err := msg.Datastore()
	if err != nil {
		return nil, err
	}
	img, err := msg.Image()
	if err != nil {
		return nil, err
	}
	return openImageOf(ds, img, rt, open)
}

func openImageOf(ds *one.Datastore, img *one.Image, rt *Runtime, open Opener) (*imageRequest, error) {
	var err error
	r := &imageRequest{rbd: img.Format() == "rbd"}
	if r.dsID, err = ds.ID(); err != nil {
		return nil, err
	}
	if r.store, err = open(ds, rt); err != nil {
		return nil, err
	}
	incs, err := img.Increments()
	if err != nil {
		return nil, err
	}
	for _, in := range incs {
		r.chain = append(r.chain, chain.Item{ID: in.ID, Snap: in.Source})
	}
	if err := r.chain.Validate(r.store.Backend()); err != nil {
		return nil, err
	}
	if r.loc.JobID, err = img.BackupJobID(); err != nil {
		return nil, err
	}
	if r.loc.VMID, err = img.VMID(); err != nil {
		return nil, err
	}
	if r.loc.VMID < 0 {
		if m := legacyPathVMRe.FindStringSubmatch(img.Path()); m != nil {
			r.loc.VMID, _ = strconv.Atoi(m[1])
		}
	}
	if r.loc.VMID < 0 && r.store.Backend() == "rsync" {
		return nil, fmt.Errorf("backup image has no VMS/ID: cannot tell which VM it belongs to")
	}
	return r, nil
}

// Remove is the rm action: delete every restore point of the backup image.
func Remove(ctx context.Context, rt *Runtime, open Opener, msg *one.Message) error {
	r, err := openImage(msg, rt, open)
	if err != nil {
		return err
	}
	rt.Log.Infof("removing backups %v of VM %d", r.chain.Snaps(), r.loc.VMID)
	return r.store.Remove(ctx, r.loc, r.chain.Snaps())
}

// Stat is the stat action: the size (MiB) of the disk a backup URL points to, as recorded in
// the backup's vm.xml.
func Stat(ctx context.Context, rt *Runtime, open Opener, msg *one.Message) (string, error) {
	ds, err := msg.Datastore()
	if err != nil {
		return "", err
	}
	img, err := msg.Image()
	if err != nil {
		return "", err
	}
	u, err := chain.ParseURL(img.Path())
	if err != nil {
		return "", err
	}
	dsID, err := ds.ID()
	if err != nil {
		return "", err
	}
	if u.DSID != dsID {
		return "", fmt.Errorf("backup URL names datastore %d, but this is datastore %d", u.DSID, dsID)
	}
	store, err := open(ds, rt)
	if err != nil {
		return "", err
	}
	if u.Backend != store.Backend() {
		return "", fmt.Errorf("a %s URL cannot be read from a %s datastore", u.Backend, store.Backend())
	}
	loc := Location{JobID: u.JobID}
	if loc.VMID, err = u.VMID(); err != nil {
		return "", err
	}
	if jid, err := img.BackupJobID(); err != nil {
		return "", err
	} else if jid != "" {
		loc.JobID = jid
	}
	stored, err := store.ReadVMXML(ctx, loc, u.Chain.Last().Snap, u.Path)
	if err != nil {
		return "", err
	}
	if rt.DryRun {
		return "", nil
	}
	return one.DiskSizeFromVMXML(stored, u.DiskIndex())
}

// List is the ls action: the URL of every disk (and the vTPM state) of a restore point, keyed by
// disk id. incr < 0 means the last increment.
func List(ctx context.Context, rt *Runtime, open Opener, msg *one.Message, incr int) (map[string]string, error) {
	r, err := openImage(msg, rt, open)
	if err != nil {
		return nil, err
	}
	c := r.chain
	var pick *int
	if incr >= 0 {
		c, pick = c.UpTo(incr), &incr
		if len(c) == 0 {
			return nil, fmt.Errorf("backup image has no increment %d or older", incr)
		}
	}
	snap := r.chain.Pick(pick).Snap
	files, err := r.store.Files(ctx, r.loc, snap)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, f := range files {
		idx := chain.DiskIndex(path.Base(f))
		if idx == "" {
			continue
		}
		u := chain.URL{Backend: r.store.Backend(), RBD: r.rbd, DSID: r.dsID, JobID: r.loc.JobID, Chain: c, Path: f}
		out[idx] = u.String()
	}
	if len(out) == 0 && !rt.DryRun {
		return nil, fmt.Errorf("backup %s does not contain any disks", snap)
	}
	return out, nil
}

// Monitor is the monitor action.
func Monitor(ctx context.Context, rt *Runtime, open Opener, msg *one.Message) (Usage, error) {
	ds, err := msg.Datastore()
	if err != nil {
		return Usage{}, err
	}
	store, err := open(ds, rt)
	if err != nil {
		return Usage{}, err
	}
	return store.Usage(ctx)
}
