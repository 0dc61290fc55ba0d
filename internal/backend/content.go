package backend

import (
	"errors"
	"fmt"

	"onebackup/internal/qcow2"
)

// ContentCheck prepares the check of a chain merge: it computes what a guest would read from
// the chain's files (oldest first, already checked against their records) and returns the
// function that compares the merged image with it. The files' bytes are checked one by one
// when they are read; this closes the last gap, the merge itself. Images the content reader
// does not interpret are merged unchecked (logged).
func ContentCheck(rt *Runtime, files []string) (func(merged, what string) error, error) {
	want, wantGeo, err := qcow2.ChainDigest(files)
	if errors.Is(err, qcow2.ErrUnsupported) {
		rt.Log.Debugf("the merge of %v is not checked: %v", files, err)
		return func(string, string) error { return nil }, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the restore points to merge: %w", err)
	}
	return func(merged, what string) error {
		got, geo, err := qcow2.ImageDigest(merged)
		if err != nil {
			return fmt.Errorf("cannot read the merged image of %s: %w", what, err)
		}
		if geo != wantGeo {
			rt.Log.Debugf("the merge of %s is not checked: the merged image's geometry %+v differs from the backups' %+v", what, geo, wantGeo)
			return nil
		}
		if got != want {
			return fmt.Errorf("the merged image of %s does not hold what the backups hold (guest-visible content digest %.16s…, backups %.16s…): nothing is restored from it", what, got, want)
		}
		rt.Log.Debugf("merged image of %s holds what the backups hold (content digest %.16s…)", what, got)
		return nil
	}, nil
}
