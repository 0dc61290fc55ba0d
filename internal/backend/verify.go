package backend

import (
	"context"
	"fmt"
	"io"

	"onebackup/internal/checksum"
	"onebackup/internal/one"
)

// Verifier is a Store whose stored backups can be checked against their checksum records.
type Verifier interface {
	// VerifyBackup reads every file backup snap recorded and compares it with the record. It
	// returns how many files were checked; 0 means the backup has no record.
	VerifyBackup(ctx context.Context, loc Location, snap string) (int, error)
	// CheckRepository runs the backend's own check of the repository that holds loc's backups,
	// reading readData of its data (restic's --read-data-subset: "10%", "1/5", "2G"; "" reads
	// none). It returns a description of what was checked, "" when the backend has no such check.
	CheckRepository(ctx context.Context, loc Location, readData string) (string, error)
}

// VerifyReport counts what a verify run found.
type VerifyReport struct {
	Good, Corrupt, Unrecorded, Failed int // restore points
	DamagedRepos                      int // repositories whose own check failed
	repos                             map[string]bool
}

// OK tells whether nothing was found corrupt or could not be checked.
func (r *VerifyReport) OK() bool { return r.Corrupt == 0 && r.Failed == 0 && r.DamagedRepos == 0 }

// VerifyImage checks every restore point of backup image img of datastore ds and prints one line
// per restore point (and per repository checked) on out.
func VerifyImage(ctx context.Context, rt *Runtime, open Opener, ds *one.Datastore, img *one.Image, readData string, rep *VerifyReport, out io.Writer) error {
	imgID, err := img.ID()
	if err != nil {
		return err
	}
	r, err := openImageOf(ds, img, rt, open)
	if err != nil {
		return fmt.Errorf("image %d: %w", imgID, err)
	}
	v, ok := r.store.(Verifier)
	if !ok {
		return fmt.Errorf("the %s backend cannot verify backups", r.store.Backend())
	}
	name := fmt.Sprintf("image %d (VM %d)", imgID, r.loc.VMID)
	if rep.repos == nil {
		rep.repos = map[string]bool{}
	}
	if key := fmt.Sprintf("%d/%d/%s", r.dsID, r.loc.VMID, r.loc.JobID); !rep.repos[key] {
		rep.repos[key] = true
		what, err := v.CheckRepository(ctx, r.loc, readData)
		switch {
		case checksum.IsCorrupt(err):
			rep.DamagedRepos++
			fmt.Fprintf(out, "%s: CORRUPT: %v\n", name, err)
		case err != nil:
			rep.Failed++
			fmt.Fprintf(out, "%s: NOT CHECKED: %v\n", name, err)
		case what != "":
			fmt.Fprintf(out, "%s: ok: %s\n", name, what)
		}
	}
	// A restore point is rebuilt from its own backup and every earlier one of the chain: one
	// corrupt backup spoils the points after it too.
	spoiled := ""
	for _, it := range r.chain {
		point := fmt.Sprintf("%s restore point %d (backup %s)", name, it.ID, it.Snap)
		n, err := v.VerifyBackup(ctx, r.loc, it.Snap)
		switch {
		case checksum.IsCorrupt(err):
			rep.Corrupt++
			spoiled = it.Snap
			fmt.Fprintf(out, "%s: CORRUPT: %v\n", point, err)
		case spoiled != "" && err == nil:
			rep.Corrupt++
			fmt.Fprintf(out, "%s: CORRUPT: it is rebuilt from backup %s, which is corrupt\n", point, spoiled)
		case err != nil:
			rep.Failed++
			fmt.Fprintf(out, "%s: NOT CHECKED: %v\n", point, err)
		case n == 0:
			rep.Unrecorded++
			fmt.Fprintf(out, "%s: not verifiable: it has no checksum record (made before onebackup recorded them, or by OpenNebula's driver)\n", point)
		default:
			rep.Good++
			fmt.Fprintf(out, "%s: ok: %d files match their checksums\n", point, n)
		}
	}
	return nil
}
