package flare

import (
	"fmt"
	"os"
	"strings"
)

// Admin channel topics of NVFlare 2.0 (server → client requests; replies
// are "reply_" + topic).
const (
	TopicSetRunNumber = "train.set_run_number"
	TopicDeploy       = "train.deploy"
	TopicStart        = "train.start"
	TopicAbort        = "train.abort"
	TopicCheckStatus  = "train.check_status"
	TopicShutdown     = "train.shutdown"
	TopicSysInfo      = "sys.info"
	TopicAbortTask    = "train.abort_task"
	TopicDeleteRun    = "train.delete_run"
	TopicAux          = "__aux_command__"
)

// SysInfo is what NVFlare's sys.info reply holds (psutil.virtual_memory()),
// read from /proc/meminfo; missing values are left out.
func SysInfo() map[string]any {
	info := map[string]any{}
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return info
	}
	kb := map[string]int64{}
	for _, line := range strings.Split(string(data), "\n") {
		var name string
		var v int64
		if n, _ := fmt.Sscanf(strings.Replace(line, ":", " ", 1), "%s %d", &name, &v); n == 2 {
			kb[name] = v * 1024
		}
	}
	total, avail := kb["MemTotal"], kb["MemAvailable"]
	info["total"], info["available"], info["free"] = total, avail, kb["MemFree"]
	info["used"] = total - kb["MemFree"] - kb["Buffers"] - kb["Cached"]
	if total > 0 {
		info["percent"] = float64(int(1000*float64(total-avail)/float64(total))) / 10
	}
	return info
}

// MaxRunNumberDigits keeps a run number an int64 (and its folder name short).
const MaxRunNumberDigits = 18

// NewAdminRequest is a server → client request as NVFlare's admin sends
// it: a new id, the run number and the admin user in its headers, with
// more headers as name, value pairs. A request without a body has a nil
// Body.
func NewAdminRequest(topic, run string, body []byte, headers ...string) *AdminRequest {
	h := map[string]string{"run_number": run, "_userName": "flarego"}
	for i := 0; i+1 < len(headers); i += 2 {
		h[headers[i]] = headers[i+1]
	}
	return &AdminRequest{ID: NewUUID(), Topic: topic, Headers: h, Body: body}
}
