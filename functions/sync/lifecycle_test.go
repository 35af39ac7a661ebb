package function

import (
	"context"
	"net/http"
	"testing"
)

// TestStart_Twice: a second Start is refused, so it cannot open a second
// Redis client and lose the first, which Stop could then not close; the
// first one keeps serving until Stop.
func TestStart_Twice(t *testing.T) {
	url, f := serve(t, true)
	if err := f.Start(context.Background(), config(t)); err == nil {
		t.Error("a second Start succeeded")
	}
	if resp := postEvent(t, url, change1(t)); resp.StatusCode != http.StatusOK {
		t.Errorf("after a second Start: %s, want 200 from the first", resp.Status)
	}
	if err := f.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if resp := postEvent(t, url, change1(t)); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after Stop: %s, want 503", resp.Status)
	}
}
