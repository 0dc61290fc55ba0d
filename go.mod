module onebackup

go 1.26.8

require (
	github.com/beevik/etree v1.8.1
	github.com/kolo/xmlrpc v0.0.0-20220921171641-a4b6fa1dd06b
	github.com/sirupsen/logrus v1.10.2
	github.com/spf13/cobra v1.10.2
	github.com/spf13/pflag v1.0.9
	golang.org/x/sys v0.13.0
	libvirt.org/go/libvirt v1.10009.0
	libvirt.org/go/libvirtxml v1.12008.0
)

require github.com/inconshreveable/mousetrap v1.1.0 // indirect
