# onebackup — OpenNebula backup datastore drivers in Go.
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X onebackup/internal/cli.Version=$(VERSION)
BIN       := bin/onebackup
# Where `make install` lays out OpenNebula's remotes tree.
DESTDIR   ?=
REMOTES   ?= /var/lib/one/remotes
RESTIC    ?= $(CURDIR)/.cache/bin/restic
RESTIC_ACTIONS := backup backup_cancel rm stat monitor ls restore increment_flatten cp clone mkfs snap_delete snap_revert snap_flatten
RSYNC_ACTIONS  := backup backup_cancel rm stat monitor ls restore increment_flatten cp clone mkfs snap_delete snap_revert snap_flatten export

.PHONY: all build test unit demo install deps bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/onebackup

# Everything the tests need (packages, restic 0.18.1, the oneadmin user) is installed by the script.
deps:
	test/harness/setup-deps.sh

unit:
	$(GO) test ./internal/...

test: deps build
	$(GO) test -count=1 -timeout 40m ./...

demo: deps build
	test/demo.sh

bench: deps build
	bench/run.sh

install: build
	install -d $(DESTDIR)$(REMOTES)/datastore/restic $(DESTDIR)$(REMOTES)/datastore/rsync
	install -m 0755 $(BIN) $(DESTDIR)$(REMOTES)/datastore/onebackup
	for a in $(RESTIC_ACTIONS); do ln -sfn ../onebackup $(DESTDIR)$(REMOTES)/datastore/restic/$$a; done
	for a in $(RSYNC_ACTIONS); do ln -sfn ../onebackup $(DESTDIR)$(REMOTES)/datastore/rsync/$$a; done
	for b in restic rsync; do ln -sfn onebackup $(DESTDIR)$(REMOTES)/datastore/$${b}_downloader.rb; done
	if [ -x "$(RESTIC)" ]; then install -m 0755 $(RESTIC) $(DESTDIR)$(REMOTES)/datastore/restic/restic; fi

clean:
	rm -rf bin
