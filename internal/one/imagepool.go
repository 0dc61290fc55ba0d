package one

import (
	"fmt"
	"strconv"
)

// imageTypeBackup is IMAGE/TYPE of backup images (oned's Image::BACKUP).
const imageTypeBackup = 6

// BackupImagesMB sums the SIZE (MiB) of the backup images of datastore dsID in an IMAGE_POOL
// document (one.imagepool.info): what a datastore without a file system to ask (restic on S3)
// reports as used.
func BackupImagesMB(poolXML []byte, dsID int) (int64, error) {
	m, err := ParseMessage(poolXML)
	if err != nil {
		return 0, fmt.Errorf("image pool: %w", err)
	}
	if m.root.Tag != "IMAGE_POOL" {
		return 0, fmt.Errorf("image pool: expected IMAGE_POOL, got %s", m.root.Tag)
	}
	var used int64
	for _, e := range m.root.SelectElements("IMAGE") {
		img := node{e}
		if img.text("DATASTORE_ID") != strconv.Itoa(dsID) || img.text("TYPE") != strconv.Itoa(imageTypeBackup) {
			continue
		}
		size, err := strconv.ParseInt(img.text("SIZE"), 10, 64)
		if err != nil || size < 0 {
			return 0, fmt.Errorf("image pool: image %s has an invalid SIZE %q", img.text("ID"), img.text("SIZE"))
		}
		used += size
	}
	return used, nil
}

// BackupImageIDs lists the ids of the backup images of datastore dsID in an IMAGE_POOL document.
func BackupImageIDs(poolXML []byte, dsID int) ([]int, error) {
	m, err := ParseMessage(poolXML)
	if err != nil {
		return nil, fmt.Errorf("image pool: %w", err)
	}
	if m.root.Tag != "IMAGE_POOL" {
		return nil, fmt.Errorf("image pool: expected IMAGE_POOL, got %s", m.root.Tag)
	}
	var ids []int
	for _, e := range m.root.SelectElements("IMAGE") {
		img := node{e}
		if img.text("DATASTORE_ID") != strconv.Itoa(dsID) || img.text("TYPE") != strconv.Itoa(imageTypeBackup) {
			continue
		}
		id, err := strconv.Atoi(img.text("ID"))
		if err != nil || id < 0 {
			return nil, fmt.Errorf("image pool: an image has an invalid ID %q", img.text("ID"))
		}
		ids = append(ids, id)
	}
	return ids, nil
}
