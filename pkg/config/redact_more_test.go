package config

import (
	"strings"
	"testing"
)

// TestRedactURL_OtherSecretNames: query parameters that commonly carry a
// secret without "pass", "secret" or "token" in their name.
func TestRedactURL_OtherSecretNames(t *testing.T) {
	for _, in := range []string{
		"http://sink/?apikey=s3cret",
		"http://sink/?api_key=s3cret",
		"http://sink/?key=s3cret",
		"http://sink/?pwd=s3cret",
		"http://sink/?auth=s3cret",
		"https://store/o?sig=s3cret",                                     // an Azure SAS URL
		"https://store/o?X-Amz-Credential=AKIA/x&X-Amz-Signature=s3cret", // a presigned S3 URL
	} {
		if got := RedactURL(in); strings.Contains(got, "s3cret") {
			t.Errorf("RedactURL(%q) = %q", in, got)
		}
	}
}
