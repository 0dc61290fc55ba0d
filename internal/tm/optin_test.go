package tm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"onebackup/internal/oned/onedtest"
)

// The frontend reads the backup datastore's opt-in attributes (LVM_THIN_INCREMENTS) for the
// drivers whose rows have opt-in cells only, from the datastore the VM backs up into.
func TestLVMOptInFromBackupDatastore(t *testing.T) {
	calls := 0
	srv := onedtest.New(func(c onedtest.Call) onedtest.Reply {
		calls++
		if c.Method != "one.datastore.info" {
			return onedtest.Fail("unexpected " + c.Method)
		}
		attr, ok := map[int]string{100: "YES", 101: "no"}[c.Int(1)]
		if !ok {
			return onedtest.Fail("[one.datastore.info] Error getting datastore")
		}
		return onedtest.OK("<DATASTORE><ID>100</ID><DS_MAD>restic</DS_MAD><TEMPLATE><LVM_THIN_INCREMENTS>" + attr + "</LVM_THIN_INCREMENTS></TEMPLATE></DATASTORE>")
	})
	defer srv.Close()
	auth := filepath.Join(t.TempDir(), "one_auth")
	os.WriteFile(auth, []byte("oneadmin:pw\n"), 0o600)
	t.Setenv("ONE_XMLRPC", srv.URL)
	t.Setenv("ONE_AUTH", auth)

	vm := func(ds string) []byte {
		return []byte("<VM><ID>7</ID><BACKUPS><BACKUP_CONFIG><LAST_DATASTORE_ID>" + ds + "</LAST_DATASTORE_ID></BACKUP_CONFIG></BACKUPS></VM>")
	}
	var log bytes.Buffer
	ctx := context.Background()
	if got := optIns("fs_lvm_ssh", loadBackupDS(ctx, vm("100")), &log); !slices.Equal(got, []string{"LVM_THIN_INCREMENTS"}) {
		t.Errorf("fs_lvm_ssh into datastore 100: %v", got)
	}
	if got := optIns("lvm", loadBackupDS(ctx, vm("101")), &log); len(got) != 0 {
		t.Errorf("lvm into datastore 101 (attribute no): %v", got)
	}
	before := calls
	if got := optIns("qcow2", loadBackupDS(ctx, vm("100")), &log); len(got) != 0 || calls != before {
		t.Errorf("qcow2: %v, %d oned calls", got, calls-before)
	}
	if got := optIns("lvm", loadBackupDS(ctx, vm("102")), &log); len(got) != 0 || !strings.Contains(log.String(), "cannot load backup datastore 102") {
		t.Errorf("unknown datastore: %v, log %q", got, log.String())
	}
	// One oned call serves both the opt-ins and the command limits.
	load := loadBackupDS(ctx, vm("100"))
	before = calls
	optIns("lvm", load, &log)
	load()
	if calls-before != 1 {
		t.Errorf("%d oned calls for one action", calls-before)
	}
}
