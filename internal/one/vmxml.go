package one

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// DiskSizeFromVMXML returns DISK[DISK_ID=id]/SIZE (MiB) of a stored vm.xml, which backups keep
// as base64 text.
func DiskSizeFromVMXML(stored []byte, diskID string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(stored)), ""))
	if err != nil {
		return "", fmt.Errorf("stored vm.xml is not valid base64")
	}
	msg, err := ParseMessage(raw)
	if err != nil {
		return "", fmt.Errorf("stored vm.xml: %v", err)
	}
	for _, d := range msg.root.FindElements("./TEMPLATE/DISK") {
		if (node{d}).text("DISK_ID") != diskID {
			continue
		}
		size := (node{d}).text("SIZE")
		if size == "" || strings.Trim(size, "0123456789") != "" {
			return "", fmt.Errorf("cannot find size for disk %s in VM backup info", diskID)
		}
		return size, nil
	}
	return "", fmt.Errorf("cannot find disk %s in VM backup info", diskID)
}
