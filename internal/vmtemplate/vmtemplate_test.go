package vmtemplate

import (
	"encoding/base64"
	"strings"
	"testing"
)

const vmXML = `<VM><ID>42</ID><NAME>web</NAME><TEMPLATE>
<AUTOMATIC_DS_REQUIREMENTS><![CDATA[("CLUSTERS/ID" @> 0)]]></AUTOMATIC_DS_REQUIREMENTS>
<CONTEXT><DISK_ID>3</DISK_ID><ETH0_IP>10.0.0.5</ETH0_IP><ETH0_ALIAS0_IP>10.0.0.9</ETH0_ALIAS0_IP><PCI0_MAC>02:00</PCI0_MAC><METHOD>keep</METHOD><NETWORK>YES</NETWORK><SSH_PUBLIC_KEY><![CDATA[ssh-ed25519 AAA "me"]]></SSH_PUBLIC_KEY></CONTEXT>
<CPU>1</CPU>
<DISK><ALLOW_ORPHANS>FORMAT</ALLOW_ORPHANS><CLONE>YES</CLONE><DATASTORE>default</DATASTORE><DATASTORE_ID>1</DATASTORE_ID><DEV_PREFIX>vd</DEV_PREFIX><DISK_ID>0</DISK_ID><DRIVER>qcow2</DRIVER><IMAGE>deb</IMAGE><IMAGE_ID>5</IMAGE_ID><SIZE>2048</SIZE><SOURCE>/x</SOURCE><TARGET>vda</TARGET><TYPE>FILE</TYPE><FORMAT>qcow2</FORMAT></DISK>
<DISK><DISK_ID>1</DISK_ID><IMAGE_ID>6</IMAGE_ID><SIZE>100</SIZE><TYPE>FILE</TYPE></DISK>
<DISK><DISK_ID>2</DISK_ID><SIZE>512</SIZE><TYPE>swap</TYPE><TARGET>vdc</TARGET></DISK>
<DISK><DISK_ID>3</DISK_ID><SIZE>64</SIZE><TYPE>fs</TYPE><FS>ext4</FS><FORMAT>raw</FORMAT></DISK>
<DISK><DISK_ID>4</DISK_ID><IMAGE_ID>9</IMAGE_ID><TYPE>CDROM</TYPE><SIZE>300</SIZE></DISK>
<DISK><DISK_ID>5</DISK_ID><IMAGE_ID>11</IMAGE_ID><TYPE>FILE</TYPE><SIZE>10</SIZE></DISK>
<GRAPHICS><LISTEN>0.0.0.0</LISTEN><PORT>5942</PORT><TYPE>VNC</TYPE></GRAPHICS>
<MEMORY>1024</MEMORY>
<NIC><AR_ID>0</AR_ID><BRIDGE>br0</BRIDGE><IP>10.0.0.5</IP><IP6_GLOBAL>2001::5</IP6_GLOBAL><MAC>02:00:0a</MAC><NAME>NIC0</NAME><NETWORK>pub</NETWORK><NETWORK_UNAME>oneadmin</NETWORK_UNAME><NIC_ID>0</NIC_ID><VN_MAD>bridge</VN_MAD></NIC>
<NIC><IP6>2001::6</IP6><MAC>02:00:0b</MAC><NETWORK>v6</NETWORK><NIC_ID>1</NIC_ID></NIC>
<NIC><MAC>02:00:0c</MAC><NETWORK>priv</NETWORK></NIC>
<NIC_ALIAS><PARENT>NIC0</PARENT><NETWORK>pub</NETWORK></NIC_ALIAS>
<NUMA_NODE><CPUS>0</CPUS><MEMORY>1024</MEMORY><MEMORY_NODE_ID>0</MEMORY_NODE_ID><NODE_ID>0</NODE_ID><TOTAL_CPUS>1</TOTAL_CPUS></NUMA_NODE>
<OS><ARCH>x86_64</ARCH><UUID>abc</UUID></OS>
<PCI><ADDRESS>0000:01:00.0</ADDRESS><BUS>01</BUS><CLASS>0300</CLASS><DEVICE>1234</DEVICE><VENDOR>10de</VENDOR><PCI_ID>0</PCI_ID><VM_BUS>0x01</VM_BUS></PCI>
<SECURITY_GROUP_RULE><PROTOCOL>ALL</PROTOCOL></SECURITY_GROUP_RULE>
<TEMPLATE_ID>3</TEMPLATE_ID><TM_MAD_SYSTEM>ssh</TM_MAD_SYSTEM><VMID>42</VMID>
<EMPTY></EMPTY><EMPTYVEC><A></A></EMPTYVEC>
</TEMPLATE><USER_TEMPLATE><CPU>2</CPU><DESCRIPTION>C:\dir "quoted"</DESCRIPTION><LOGO>trailing\</LOGO><ERROR>old error</ERROR><LABELS>a,b</LABELS></USER_TEMPLATE></VM>`

func decode(t *testing.T) *VM {
	t.Helper()
	vm, err := Decode([]byte(base64.StdEncoding.EncodeToString([]byte(vmXML))))
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func TestGenerate(t *testing.T) {
	vm := decode(t)
	if vm.ID != 42 {
		t.Fatalf("VM ID %d", vm.ID)
	}
	got, warnings, err := vm.Generate(Options{Name: `web "r"`, Images: map[string]string{"0": "210", "1": "211", "3": "212"}, TPMState: "dHBt"})
	if err != nil {
		t.Fatal(err)
	}
	want := `NAME= "web \"r\""
CONTEXT=[
    METHOD="keep",
    NETWORK="YES",
    SSH_PUBLIC_KEY="ssh-ed25519 AAA \"me\""
]
CPU= "2"
DISK=[
    DEV_PREFIX="vd",
    IMAGE_ID="210"
]
DISK=[
    IMAGE_ID="211"
]
DISK=[
    SIZE="512",
    TYPE="swap"
]
DISK=[
    FS="ext4",
    IMAGE_ID="212"
]
DISK=[
    IMAGE_ID="9"
]
GRAPHICS=[
    LISTEN="0.0.0.0",
    TYPE="VNC"
]
MEMORY= "1024"
NIC=[
    IP="10.0.0.5",
    NETWORK="pub",
    NETWORK_UNAME="oneadmin"
]
NIC=[
    IP6="2001::6",
    NETWORK="v6"
]
NIC=[
    MAC="02:00:0c",
    NETWORK="priv"
]
NIC_ALIAS=[
    PARENT="NIC0",
    NETWORK="pub"
]
NUMA_NODE=[
    MEMORY="1024",
    TOTAL_CPUS="1"
]
OS=[
    ARCH="x86_64"
]
PCI=[
    CLASS="0300",
    DEVICE="1234",
    VENDOR="10de"
]
DESCRIPTION= "C:\dir \"quoted\""
LABELS= "a,b"
TPM_STATE= "dHBt"
`
	if got != want {
		t.Errorf("template:\n%s\nwant:\n%s", got, want)
	}
	wantWarn := []string{"disk 5 (image 11) is not in the backup", "attribute LOGO left out"}
	if len(warnings) != len(wantWarn) {
		t.Fatalf("warnings %q", warnings)
	}
	for i, w := range wantWarn {
		if !strings.HasPrefix(warnings[i], w) {
			t.Errorf("warning %d = %q, want prefix %q", i, warnings[i], w)
		}
	}
}

func TestOptions(t *testing.T) {
	vm := decode(t)
	cases := []struct {
		name       string
		opts       Options
		has, hasnt []string
	}{
		{"no ip", Options{Name: "x", NoIP: true}, []string{"NIC=[\n    NETWORK=\"pub\"", "NIC=[\n    NETWORK=\"priv\""}, []string{"IP=", "IP6=", "MAC=", "TPM_STATE"}},
		{"no nic", Options{Name: "x", NoNIC: true}, []string{"CONTEXT=[", "PCI=["}, []string{"NIC=", "NIC_ALIAS="}},
		{"nothing restored", Options{Name: "x"}, []string{"DISK=[\n    SIZE=\"64\",\n    TYPE=\"fs\",\n    FS=\"ext4\"\n]", "DISK=[\n    SIZE=\"512\",\n    TYPE=\"swap\"\n]"}, []string{"IMAGE_ID=\"5\"", "IMAGE_ID=\"6\""}},
		{"swap restored", Options{Name: "x", Images: map[string]string{"2": "300"}}, []string{"DISK=[\n    IMAGE_ID=\"300\"\n]"}, []string{"TYPE=\"swap\""}},
	}
	for _, c := range cases {
		got, _, err := vm.Generate(c.opts)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for _, s := range c.has {
			if !strings.Contains(got, s) {
				t.Errorf("%s: template lacks %q:\n%s", c.name, s, got)
			}
		}
		for _, s := range c.hasnt {
			if strings.Contains(got, s) {
				t.Errorf("%s: template has %q:\n%s", c.name, s, got)
			}
		}
	}
	// The options of one request never leak into the next (W15: NO_IP grew a shared list).
	a, _, _ := vm.Generate(Options{Name: "x", NoIP: true})
	b, _, _ := vm.Generate(Options{Name: "x"})
	if a == b || !strings.Contains(b, `IP="10.0.0.5"`) {
		t.Errorf("NO_IP leaked into a later request:\n%s", b)
	}
	if _, _, err := vm.Generate(Options{}); err == nil {
		t.Error("empty NAME accepted")
	}
	if _, _, err := vm.Generate(Options{Name: `bad\`}); err == nil {
		t.Error("NAME ending in a backslash accepted")
	}
}

func TestQuote(t *testing.T) {
	cases := []struct{ in, out, err string }{
		{"plain", `"plain"`, ""},
		{`a"b`, `"a\"b"`, ""},
		{`C:\dir`, `"C:\dir"`, ""},
		{`a\"b`, `"a\\"b"`, ""},
		{"multi\nline", "\"multi\nline\"", ""},
		{`end\`, "", "backslash"},
		{"x]]>y", "", "]]>"},
		{"", `""`, ""},
	}
	for _, c := range cases {
		got, err := Quote(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Quote(%q) error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.out {
			t.Errorf("Quote(%q) = %q, %v; want %q", c.in, got, err, c.out)
		}
		// What oned's parser does with it: strip the quotes, turn every \" into ".
		if back := strings.ReplaceAll(got[1:len(got)-1], `\"`, `"`); back != c.in {
			t.Errorf("Quote(%q) reads back as %q", c.in, back)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, in := range []string{"!!!", base64.StdEncoding.EncodeToString([]byte("<IMAGE/>")), "<VM"} {
		if _, err := Decode([]byte(in)); err == nil {
			t.Errorf("Decode(%q) accepted", in)
		}
	}
	vm, err := Decode([]byte("<VM><TEMPLATE/></VM>"))
	if err != nil || vm.ID != -1 {
		t.Errorf("raw XML without ID: %+v %v", vm, err)
	}
}
