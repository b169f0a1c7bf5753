package fcp

import (
	"path/filepath"
	"testing"
)

func TestTensorBoardDir(t *testing.T) {
	t.Setenv(EnvTBLogs, "")
	// /tb-logs is not there outside FCP's container (where it is, it wins
	// over nothing, which this test cannot tell from here).
	def := (Locations{}).TensorBoardDir()
	if def != "" && def != DefaultTBLogs {
		t.Errorf("default: %q", def)
	}
	if got := (Locations{TBLogs: "/flag"}).TensorBoardDir(); got != "/flag" {
		t.Errorf("flag: %q", got)
	}
	t.Setenv(EnvTBLogs, "/env")
	if got := (Locations{}).TensorBoardDir(); got != "/env" {
		t.Errorf("environment: %q", got)
	}
	if got := (Locations{TBLogs: "/flag"}).TensorBoardDir(); got != "/flag" {
		t.Errorf("flag over environment: %q", got)
	}
	if got := (Locations{TBLogs: "off"}).TensorBoardDir(); got != "" {
		t.Errorf("--tb-logs off: %q", got)
	}
	t.Setenv(EnvTBLogs, "off")
	if got := (Locations{}).TensorBoardDir(); got != "" {
		t.Errorf("FLAREGO_TB_LOGS=off: %q", got)
	}
	for name, want := range map[string]string{"site-1": "site-1", "a/../b": "a_.._b", "..": "_..", "": "_", "x\ny": "x_y"} {
		if got := RunDir("/tb", name); got != filepath.Join("/tb", want) {
			t.Errorf("RunDir(%q) = %q, want /tb/%s", name, got, want)
		}
	}
	if RunDir("", "site-1") != "" {
		t.Error("RunDir without a folder")
	}
}
