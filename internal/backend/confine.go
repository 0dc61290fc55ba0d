package backend

import (
	"fmt"
	"strconv"
	"strings"

	"onebackup/internal/one"
)

// Confinement limits the upload of a backup on the VM host, from the datastore attributes
// <MAD>_NICE, <MAD>_IONICE (nice mode) or <MAD>_MAX_RIOPS, <MAD>_MAX_WIOPS, <MAD>_CPU_QUOTA,
// <MAD>_MEMORY_MAX_MB (systemd mode, which needs a systemd user manager on the host).
type Confinement struct {
	DSID                                    int
	Nice, IONice                            int // -1: unset
	ReadIOPS, WriteIOPS, CPUQuota, MemMaxMB int // -1: unset
}

func (c Confinement) systemd() bool {
	return c.ReadIOPS >= 0 || c.WriteIOPS >= 0 || c.CPUQuota >= 0 || c.MemMaxMB >= 0
}

// ParseConfinement reads and validates the confinement attributes of prefix (RESTIC or RSYNC).
func ParseConfinement(ds *one.Datastore, prefix string, dsID int) (Confinement, error) {
	c := Confinement{DSID: dsID}
	attrs := []struct {
		name     string
		dst      *int
		min, max int
	}{
		{"NICE", &c.Nice, -20, 19},
		{"IONICE", &c.IONice, 0, 7},
		{"MAX_RIOPS", &c.ReadIOPS, 1, 1 << 30},
		{"MAX_WIOPS", &c.WriteIOPS, 1, 1 << 30},
		{"CPU_QUOTA", &c.CPUQuota, 1, 100000},
		{"MEMORY_MAX_MB", &c.MemMaxMB, 1, 1 << 30},
	}
	for _, a := range attrs {
		*a.dst = -1
		name := prefix + "_" + a.name
		v := ds.Attr(name)
		if v == "" || v == "-1" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < a.min || n > a.max {
			return c, fmt.Errorf("invalid %s %q: expected an integer from %d to %d", name, v, a.min, a.max)
		}
		*a.dst = n
	}
	return c, nil
}

// Wrap returns argv run under the confinement. dir is the staging directory (the device the IOPS
// limits apply to); envNames are the variables the program needs, which systemd-run copies from
// its own environment (values never appear on the command line).
func (c Confinement) Wrap(argv []string, dir string, envNames []string) []string {
	if c.systemd() {
		out := []string{"systemd-run", "--user", "--quiet", "--pipe", "--collect", "--wait",
			fmt.Sprintf("--slice=backup.%d.slice", c.DSID)}
		if c.CPUQuota >= 0 {
			out = append(out, fmt.Sprintf("--property=CPUQuota=%d%%", c.CPUQuota))
		}
		if c.MemMaxMB >= 0 {
			out = append(out, fmt.Sprintf("--property=MemoryMax=%dM", c.MemMaxMB))
		}
		if c.ReadIOPS >= 0 {
			out = append(out, fmt.Sprintf("--property=IOReadIOPSMax=%s %d", dir, c.ReadIOPS))
		}
		if c.WriteIOPS >= 0 {
			out = append(out, fmt.Sprintf("--property=IOWriteIOPSMax=%s %d", dir, c.WriteIOPS))
		}
		for _, n := range envNames {
			out = append(out, "--setenv="+n)
		}
		return append(append(out, "--"), argv...)
	}
	var out []string
	if c.Nice != -1 {
		out = append(out, "nice", "-n", strconv.Itoa(c.Nice))
	}
	if c.IONice >= 0 {
		out = append(out, "ionice", "-c2", "-n"+strconv.Itoa(c.IONice))
	}
	return append(out, argv...)
}

// String describes the confinement for logs.
func (c Confinement) String() string {
	var parts []string
	for _, p := range []struct {
		n string
		v int
	}{{"nice", c.Nice}, {"ionice", c.IONice}, {"read IOPS", c.ReadIOPS}, {"write IOPS", c.WriteIOPS}, {"CPU %", c.CPUQuota}, {"memory MiB", c.MemMaxMB}} {
		if p.v != -1 {
			parts = append(parts, fmt.Sprintf("%s %d", p.n, p.v))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
