package lvm

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Volume is one logical volume as lvs reports it.
type Volume struct {
	Name, VG string
	Pool     string // thin pool of a thin volume ("" otherwise)
	ThinID   int    // device id inside the pool (-1 for other volumes)
	Size     int64  // bytes
	Active   bool
	Origin   string // what a snapshot was taken of
	SegType  string // thin, thin-pool, linear, striped, ...
}

// Thin tells a thin volume (snapshots of thin volumes are thin volumes too).
func (v Volume) Thin() bool { return v.SegType == "thin" }

// ParseReport reads lvs --reportformat json. Values are strings there, empty when LVM cannot
// tell (lv_active of a VG whose device-mapper state is unknown).
func ParseReport(out []byte) ([]Volume, error) {
	var doc struct {
		Report []struct {
			LV []map[string]string `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("cannot read the lvs report: %w", err)
	}
	var vols []Volume
	for _, r := range doc.Report {
		for _, lv := range r.LV {
			v := Volume{Name: lv["lv_name"], VG: lv["vg_name"], Pool: lv["pool_lv"], ThinID: -1,
				Active: lv["lv_active"] == "active", Origin: lv["origin"], SegType: lv["segtype"]}
			if v.Name == "" || v.VG == "" {
				return nil, fmt.Errorf("the lvs report has a volume without a name or volume group: %v", lv)
			}
			size, err := strconv.ParseInt(strings.TrimSpace(lv["lv_size"]), 10, 64)
			if err != nil || size < 0 {
				return nil, fmt.Errorf("the lvs report gives volume %s/%s the size %q", v.VG, v.Name, lv["lv_size"])
			}
			v.Size = size
			if s := lv["thin_id"]; s != "" {
				if v.ThinID, err = strconv.Atoi(s); err != nil || v.ThinID < 0 {
					return nil, fmt.Errorf("the lvs report gives volume %s/%s the thin id %q", v.VG, v.Name, s)
				}
			}
			vols = append(vols, v)
		}
	}
	return vols, nil
}

// find returns the volume named lv.
func find(vols []Volume, lv string) (Volume, bool) {
	for _, v := range vols {
		if v.Name == lv {
			return v, true
		}
	}
	return Volume{}, false
}
