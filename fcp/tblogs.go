package fcp

import (
	"os"
	"path/filepath"
	"strings"
)

// DefaultTBLogs is the folder FCP mounts for TensorBoard event files.
const DefaultTBLogs = "/tb-logs"

// EnvTBLogs moves the TensorBoard folder (for the commands that take no
// --tb-logs flag, and for runs outside a container); "off" turns the
// event files off.
const EnvTBLogs = "FLAREGO_TB_LOGS"

// TBLogsOff, as --tb-logs or FLAREGO_TB_LOGS, writes no event files.
const TBLogsOff = "off"

// TensorBoardDir is where training curves go, "" for nowhere: l.TBLogs
// (--tb-logs) when set, else $FLAREGO_TB_LOGS, else /tb-logs when that
// folder exists (FCP mounted it); TBLogsOff in the first of them that is
// set turns them off. Each run writes into a folder of its own below it
// (the site's name, "server").
func (l Locations) TensorBoardDir() string {
	dir := l.TBLogs
	if dir == "" {
		dir = os.Getenv(EnvTBLogs)
	}
	if dir == "" {
		if st, err := os.Stat(DefaultTBLogs); err == nil && st.IsDir() {
			dir = DefaultTBLogs
		}
	}
	if strings.EqualFold(dir, TBLogsOff) {
		return ""
	}
	return dir
}

// RunDir is the folder of one TensorBoard run under dir: dir/name, the
// name made one safe path element (a site's name comes from its
// registration).
func RunDir(dir, name string) string {
	if dir == "" {
		return ""
	}
	name = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r < ' ' || r == 0x7f {
			return '_'
		}
		return r
	}, name)
	if name == "" || name == "." || name == ".." {
		name = "_" + name
	}
	return filepath.Join(dir, name)
}
