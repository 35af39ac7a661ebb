package broker

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// indent puts n spaces before every line of s.
func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+pad) + "\n"
}

// tlsSubscriber is an https subscriber with a certificate of its own CA;
// got receives the id of each event it answers 200 to.
func tlsSubscriber(t *testing.T) (srv *httptest.Server, caPEM string, got chan string) {
	got = make(chan string, 10)
	srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Ce-Id")
	}))
	t.Cleanup(srv.Close)
	return srv, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})), got
}

// TestDelivery_CACerts: an https subscriber whose certificate chains to a
// CA named in the Destination's CACerts gets the event; the same
// subscriber without CACerts fails the TLS handshake, and the event goes
// to the dead-letter sink, whose own CACerts are used too.
func TestDelivery_CACerts(t *testing.T) {
	srv, ca, got := tlsSubscriber(t)
	dls, dlsCA, dead := tlsSubscriber(t)
	withCA := trigger("with-ca", "  filter:\n    attributes:\n      type: x\n  subscriber:\n    uri: "+srv.URL+"\n    CACerts: |\n"+indent(ca, 6))
	withoutCA := trigger("without-ca", "  filter:\n    attributes:\n      type: other\n  subscriber:\n    uri: "+srv.URL+"\n"+
		"  delivery:\n    deadLetterSink:\n      uri: "+dls.URL+"\n      CACerts: |\n"+indent(dlsCA, 8))
	cfg := mustLoad(t, withCA, withoutCA)
	b, _ := start(t, cfg, Options{})
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != "e1" {
			t.Fatalf("subscriber got %q", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the https subscriber with CACerts got nothing")
	}
	if err := b.Publish(context.Background(), event("e2", "other", "")); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-dead:
		if id != "e2" {
			t.Fatalf("dead-letter sink got %q", id)
		}
	case id := <-got:
		t.Fatalf("the subscriber got %q without CACerts", id)
	case <-time.After(5 * time.Second):
		t.Fatal("the event that failed the TLS handshake did not reach the dead-letter sink")
	}
}

func TestLoad_CACertsChecked(t *testing.T) {
	_, ca, _ := tlsSubscriber(t)
	key := "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n"
	for name, tc := range map[string]struct{ caCerts, want string }{
		"not PEM":            {"hello", "CACerts: no PEM certificate"},
		"empty":              {`""`, "CACerts: no PEM certificate"},
		"a key":              {"|\n" + indent(key, 6), `CACerts: a PEM block of type "PRIVATE KEY"`},
		"text after":         {"|\n" + indent(ca+"trailing words", 6), "CACerts: text outside PEM CERTIFICATE blocks"},
		"bad DER":            {"|\n" + indent("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", 6), "CACerts: certificate 1:"},
		"certificate, a key": {"|\n" + indent(ca+key, 6), `CACerts: a PEM block of type "PRIVATE KEY"`},
	} {
		t.Run(name, func(t *testing.T) {
			doc := trigger("t", "  subscriber:\n    uri: https://127.0.0.1:1/\n    CACerts: "+tc.caCerts+"\n")
			_, err := Load(manifests(brokerDoc, doc))
			if err == nil || !strings.Contains(err.Error(), "spec.subscriber: "+tc.want) {
				t.Fatalf("Load: %v, want %q", err, tc.want)
			}
		})
	}
	cfg := mustLoad(t, trigger("t", "  subscriber:\n    uri: https://127.0.0.1:1/\n    CACerts: |\n"+indent(ca+ca, 6)+"    audience: dovewarden\n"))
	if got := cfg.Triggers[0].Subscriber.CACerts; got != ca+ca {
		t.Errorf("CACerts read as %q", got)
	}
}
