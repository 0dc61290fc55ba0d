package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"onebackup/internal/backend"
	"onebackup/internal/backend/restic"
	"onebackup/internal/one"
	"onebackup/internal/oned"
	"onebackup/internal/validate"
)

// verifyCommand is the operator's check of stored backups: every restore point of the named
// backup images (or of every backup image of a datastore) is read back and compared with the
// checksums recorded when it was made; restic repositories are also checked by restic itself.
func verifyCommand() *cobra.Command {
	var o options
	dsArg, readData := "", ""
	c := &cobra.Command{
		Use:   "verify [IMAGE_ID...] [--datastore DS_ID]",
		Short: "Check stored backups against the checksums recorded when they were made",
		Long: "Reads every restore point of the given backup images (or of every backup image of a\n" +
			"datastore) back from the datastore and compares each file with the checksum recorded\n" +
			"on the host when the backup was made. restic repositories are checked by `restic check`\n" +
			"too, reading --read-data-subset of their data. One line per restore point; exit 1 when\n" +
			"anything is corrupt or could not be checked.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 0) == (dsArg == "") {
				return errors.New("name the backup images to verify or a datastore (--datastore), not both")
			}
			var ids []int
			for _, a := range args {
				id, err := validate.ID("image ID", a)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			dsID := -1
			if dsArg != "" {
				var err error
				if dsID, err = validate.ID("datastore ID", dsArg); err != nil {
					return err
				}
			}
			if err := restic.CheckReadData(readData); err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			client, err := oned.New()
			if err != nil {
				return err
			}
			call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 30*time.Second) }
			if dsID >= 0 {
				cctx, cancel := call()
				pool, err := client.ImagePoolInfo(cctx)
				cancel()
				if err != nil {
					return fmt.Errorf("cannot list the images of datastore %d: %w", dsID, err)
				}
				if ids, err = one.BackupImageIDs(pool, dsID); err != nil {
					return err
				}
				if len(ids) == 0 {
					return fmt.Errorf("datastore %d holds no backup images", dsID)
				}
			}
			rep := &backend.VerifyReport{}
			stores := map[int]*one.Datastore{}
			for _, id := range ids {
				cctx, cancel := call()
				img, err := client.ImageInfo(cctx, id)
				cancel()
				if err != nil {
					return fmt.Errorf("cannot read image %d from oned: %w", id, err)
				}
				imgDS, err := img.DatastoreID()
				if err != nil {
					return fmt.Errorf("image %d: %w", id, err)
				}
				ds, ok := stores[imgDS]
				if !ok {
					cctx, cancel := call()
					ds, err = client.DatastoreInfo(cctx, imgDS)
					cancel()
					if err != nil {
						return fmt.Errorf("cannot read datastore %d of image %d from oned: %w", imgDS, id, err)
					}
					stores[imgDS] = ds
				}
				open, ok := backends[ds.DSMad()]
				if !ok {
					return fmt.Errorf("image %d is in datastore %d, a %q datastore, not a restic or rsync backup datastore", id, imgDS, ds.DSMad())
				}
				if err := backend.VerifyImage(ctx, rt, open, ds, img, readData, rep, os.Stdout); err != nil {
					if ctx.Err() != nil {
						return errors.New("verify interrupted")
					}
					rep.Failed++
					fmt.Printf("image %d: NOT CHECKED: %v\n", id, err)
				}
			}
			fmt.Printf("%d restore points verified: %d ok, %d corrupt, %d without checksums, %d not checked; %d damaged repositories\n",
				rep.Good+rep.Corrupt+rep.Unrecorded+rep.Failed, rep.Good, rep.Corrupt, rep.Unrecorded, rep.Failed, rep.DamagedRepos)
			if !rep.OK() {
				return &exitError{code: 1, err: fmt.Errorf("verify found %d corrupt restore points, %d damaged repositories and %d it could not check", rep.Corrupt, rep.DamagedRepos, rep.Failed)}
			}
			return nil
		},
	}
	c.Flags().StringVar(&dsArg, "datastore", "", "verify every backup image of datastore `DS_ID`")
	c.Flags().StringVar(&readData, "read-data-subset", "", "restic: let restic check read this `SUBSET` of the repository's data (10%, 1/5, 2G)")
	o.registerNoXML(c)
	return c
}
