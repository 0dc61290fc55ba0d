package hostwire

import "testing"

func TestVMXMLEnvRoundTrip(t *testing.T) {
	doc := []byte("<VM><ID>1</ID><NAME>a &amp; b</NAME></VM>")
	got, err := DecodeVMXML(EncodeVMXML(doc))
	if err != nil || string(got) != string(doc) {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := DecodeVMXML("not base64!"); err == nil {
		t.Error("garbage decoded")
	}
}
