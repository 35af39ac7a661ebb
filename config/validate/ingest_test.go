package validate

// The ingest Service must accept what Dovecot's event exporter sends. Here
// the real ingest handler is started with exactly the environment and the
// mounted files the manifest gives its container, and Dovecot's request is
// made as docs/deployment.md tells operators to configure it.

import (
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
)

// operatorPassword stands for the password an operator chooses and puts
// both in a Secret and in Dovecot's exporter URL.
const operatorPassword = "Op3rator-chosen"

// fakeSecret is the value of key in the Secret name: the operator's
// password, except for the Redis URL, which points at a closed port (ingest
// only counts a failed Redis read).
func fakeSecret(name, key string) string {
	if name == "dovewarden-redis" && key == "url" {
		return "redis://127.0.0.1:1/0"
	}
	return operatorPassword
}

// containerEnv is the environment of svc's only container as Kubernetes
// would start it: literal values, Secret references resolved with
// fakeSecret, ConfigMap references with fakeConfigMaps, and each file path under a volume mount moved into a
// temporary folder that holds the files that volume would mount. A path
// under a mount inside a mounted ConfigMap file (a host map's
// password_file) is moved the same way; any other stays as it is, and
// names no file. It also returns the container's args.
func containerEnv(t *testing.T, svc *servingv1.Service) (map[string]string, []string) {
	t.Helper()
	spec := svc.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", svc.Name, len(spec.Containers))
	}
	c := spec.Containers[0]
	root := t.TempDir()
	mounts := map[string]string{} // mountPath -> local folder
	type cmFiles struct {
		dir string
		cm  *corev1.ConfigMapVolumeSource
	}
	var configMaps []cmFiles // written once every mount is known
	for _, m := range c.VolumeMounts {
		var vol *corev1.Volume
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == m.Name {
				vol = &spec.Volumes[i]
			}
		}
		if vol == nil {
			t.Fatalf("%s: volume mount %s names no volume", svc.Name, m.Name)
		}
		dir := filepath.Join(root, m.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		mounts[m.MountPath] = dir
		if vol.ConfigMap != nil {
			configMaps = append(configMaps, cmFiles{dir, vol.ConfigMap})
			continue
		}
		if vol.Secret == nil {
			continue
		}
		if len(vol.Secret.Items) == 0 {
			t.Fatalf("%s: secret volume %s lists no items; list the keys it mounts", svc.Name, vol.Name)
		}
		for _, it := range vol.Secret.Items {
			f := filepath.Join(dir, it.Path)
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f, []byte(fakeSecret(vol.Secret.SecretName, it.Key)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range configMaps {
		writeConfigMap(t, f.dir, f.cm, func(s string) string {
			for mp, dir := range mounts {
				s = strings.ReplaceAll(s, strings.TrimSuffix(mp, "/")+"/", dir+"/")
			}
			return s
		})
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			v := e.Value
			for mp, dir := range mounts {
				if rest, ok := strings.CutPrefix(v, strings.TrimSuffix(mp, "/")+"/"); ok {
					v = filepath.Join(dir, rest)
				}
			}
			env[e.Name] = v
		case e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = fakeSecret(e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			v, ok := fakeConfigMaps[e.ValueFrom.ConfigMapKeyRef.Name][e.ValueFrom.ConfigMapKeyRef.Key]
			if o := e.ValueFrom.ConfigMapKeyRef.Optional; !ok && o != nil && *o {
				continue // Kubernetes leaves the variable unset
			}
			if !ok {
				t.Fatalf("%s: env %s: no sample value for key %s of ConfigMap %s", svc.Name, e.Name, e.ValueFrom.ConfigMapKeyRef.Key, e.ValueFrom.ConfigMapKeyRef.Name)
			}
			env[e.Name] = v
		default:
			t.Fatalf("%s: env %s: only literal values, secretKeyRef and configMapKeyRef are handled here", svc.Name, e.Name)
		}
	}
	return env, c.Args
}

func serviceNamed(t *testing.T, name string) *servingv1.Service {
	t.Helper()
	for _, d := range loadManifests(t) {
		if d.kind == "Service" && d.name == name {
			return d.obj.(*servingv1.Service)
		}
	}
	t.Fatalf("no Service %s in the manifests", name)
	return nil
}

// dovecotURL is the exporter URL docs/deployment.md tells operators to
// give Dovecot for ingest.
var dovecotURL = regexp.MustCompile("`(http://[^`@]*@dovewarden-ingest[^`]*)`")

// TestIngestService_AcceptsDovecotsBasicAuth: Dovecot 2.3 and 2.4 send only
// HTTP Basic auth, taken from the exporter URL, and never retry. The ingest
// Service, started as its manifest says, must accept the URL the docs give
// (with the password the operator put in ingest's Secret), and refuse a
// request without credentials.
func TestIngestService_AcceptsDovecotsBasicAuth(t *testing.T) {
	doc := deploymentDoc(t)
	m := dovecotURL.FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/deployment.md gives no exporter URL http://USER:PASSWORD@dovewarden-ingest...")
	}
	docURL, err := url.Parse(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	user := docURL.User.Username()

	env, args := containerEnv(t, serviceNamed(t, "dovewarden-ingest"))
	if len(args) == 0 || args[0] != "ingest" {
		t.Fatalf("the ingest Service runs %q, not dovewarden ingest", args)
	}
	got := make(chan string, 1)
	broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Get("Ce-Subject"):
		default:
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer broker.Close()
	env["K_SINK"] = broker.URL // the SinkBinding injects it

	cfg, err := ingest.Load(flag.NewFlagSet("ingest", flag.ContinueOnError), args[1:], func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("ingest does not start with the manifest's settings: %v", err)
	}
	h, closeFn, err := ingest.Build(cfg, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("ingest does not start with the manifest's settings: %v", err)
	}
	defer closeFn()
	mux := http.NewServeMux()
	h.Mount(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	post := func(u *url.URL) int {
		t.Helper()
		// Go's client, like Dovecot's, sends the URL's user and password
		// as "Authorization: Basic".
		resp, err := http.Post(u.String(), "application/json", strings.NewReader(deliveryEvent))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	target, _ := url.Parse(srv.URL)
	target.Path = docURL.Path

	target.User = url.UserPassword(user, operatorPassword)
	if code := post(target); code != http.StatusAccepted {
		t.Fatalf("Dovecot's export with Basic auth %s:PASSWORD (docs/deployment.md) got %d, want 202: "+
			"the manifest's auth settings are not ones Dovecot can send (auth-user %q, password file %q, token set %v)",
			user, code, env["DOVEWARDEN_AUTH_USER"], env["DOVEWARDEN_AUTH_PASSWORD_FILE"],
			env["DOVEWARDEN_AUTH_TOKEN"] != "" || env["DOVEWARDEN_AUTH_TOKEN_FILE"] != "")
	}
	if g := <-got; g != "u1" {
		t.Errorf("the Broker got subject %q, want u1", g)
	}
	target.User = nil
	if code := post(target); code != http.StatusUnauthorized {
		t.Errorf("an export without credentials got %d, want 401: the manifest requires no auth", code)
	}
}

const deliveryEvent = `{"event":"mail_delivery_finished","hostname":"mail-a.test","end_time":"2026-11-29T10:00:00.000001Z","categories":["service:lmtp"],"fields":{"user":"u1","message_id":"<m@test>"}}`
