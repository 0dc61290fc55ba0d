// Package hostwire is the contract between the frontend's TM actions (internal/tm, CGO-free) and
// the host program on hypervisors (onebackup-host): where that program is, how the VM XML
// travels to it and the environment it reads. It is deliberately tiny so that the frontend links
// none of the host side.
package hostwire

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"io"
	"path/filepath"

	"onebackup/internal/one"
)

// VMXMLEnv carries the VM XML (gzip + base64) from the frontend's TM action through the agent,
// which gives the program no stdin.
const VMXMLEnv = "ONEBACKUP_VM_XML"

// A backup whose export runs on a bridge of the backup datastore (Ceph VMs with LAST_BRIDGE) is
// run in two phases: PhasePoint on the VM's host (leftovers, quiesce, snapshots, vTPM state) and
// PhaseExport on the bridge (staging, disk files). Postbackup runs on both.
const (
	PhasePoint  = "point"
	PhaseExport = "export"
)

// TPMEnv carries the VM's vTPM state (disk.tpm.0, base64) from the point phase on the VM's host
// to the export phase on the bridge. A vTPM state is a few KiB; the host side refuses one that
// would not fit an environment variable.
const TPMEnv = "ONEBACKUP_TPM"

// MaxTPMEnv bounds TPMEnv (the kernel's limit for one environment string is 128 KiB).
const MaxTPMEnv = 96 << 10

// TestHoldEnv names the phase at which a host-side run pauses for a test (see hostjob.Hold). Only
// binaries built with -tags testhooks pass it on (TestEnv) or honour it.
const TestHoldEnv = "ONEBACKUP_TEST_HOLD"

// HostBinary is the host program's path on hypervisors: <SCRIPTS_REMOTE_DIR>/tm/onebackup-host.
func HostBinary() string { return filepath.Join(one.HostRemotesDir(), "tm", "onebackup-host") }

// EncodeVMXML is the value of VMXMLEnv for a VM XML document.
func EncodeVMXML(xml []byte) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(xml)
	zw.Close()
	return base64.StdEncoding.EncodeToString(b.Bytes())
}

// DecodeVMXML reverses EncodeVMXML.
func DecodeVMXML(s string) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s is not base64: %w", VMXMLEnv, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s is not gzip: %w", VMXMLEnv, err)
	}
	return io.ReadAll(io.LimitReader(zr, 64<<20))
}
