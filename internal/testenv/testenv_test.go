package testenv

import (
	"os"
	"testing"
)

func TestClearAzure(t *testing.T) {
	t.Setenv("AZURE_CLIENT_ID", "x")
	t.Setenv("IDENTITY_ENDPOINT", "http://169.254.169.254/")
	t.Setenv("MSI_ENDPOINT", "x")
	t.Setenv("IMDS_ENDPOINT", "x")
	t.Setenv("TESTENV_UNRELATED", "kept")
	t.Run("cleared", func(t *testing.T) {
		ClearAzure(t)
		for _, k := range []string{"AZURE_CLIENT_ID", "IDENTITY_ENDPOINT", "MSI_ENDPOINT", "IMDS_ENDPOINT", "DEFAULT_IDENTITY_CLIENT_ID"} {
			if _, set := os.LookupEnv(k); set {
				t.Errorf("%s still set", k)
			}
		}
		if os.Getenv("TESTENV_UNRELATED") != "kept" {
			t.Error("an unrelated variable was cleared")
		}
	})
	if os.Getenv("AZURE_CLIENT_ID") != "x" || os.Getenv("IMDS_ENDPOINT") != "x" {
		t.Fatal("not restored after the test")
	}
}
