package main

import (
	"slices"
	"testing"

	"onebackup/internal/hypervisor"
	"onebackup/internal/matrix"
	"onebackup/internal/storage"
)

// The matrix's Served flags and the sides linked into this binary agree: every served row has
// both of its sides here, and every side here serves at least one row.
func TestServedRowsAreBuilt(t *testing.T) {
	hvs, sts := hypervisor.Registered(), storage.Registered()
	usedHV, usedSt := map[matrix.Hypervisor]bool{}, map[matrix.Side]bool{}
	for _, r := range matrix.Table {
		if !r.Served {
			continue
		}
		usedHV[r.Hypervisor], usedSt[r.Storage.Side()] = true, true
		if !slices.Contains(hvs, r.Hypervisor) || !slices.Contains(sts, r.Storage.Side()) {
			t.Errorf("row %s is served but its sides are not built in (hypervisors %v, storages %v)", r.Name(), hvs, sts)
		}
	}
	for _, h := range hvs {
		if !usedHV[h] {
			t.Errorf("hypervisor side %s is built in but serves no row", h)
		}
	}
	for _, s := range sts {
		if !usedSt[s] {
			t.Errorf("storage side %s is built in but serves no row", s)
		}
	}
}
