package flare_test

import (
	"strings"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/internal/flaretest"
)

// Unknown --set keys used to be ignored silently (and keys the config did
// not list, such as train_timeout, were ignored too); they are refused
// with the known ones, and values must suit the argument's type.
func TestSetWorkflowArgRefusesUnknownKeys(t *testing.T) {
	c := flaretest.ServerConfig(1, 1, 10)
	for _, kv := range [][2]string{{"min_clients", "3"}, {"wait_time_after_min_received", "0"}, {"train_task_name", "fit"}} {
		if err := c.SetWorkflowArg(kv[0], kv[1]); err != nil {
			t.Fatalf("%s=%s: %v", kv[0], kv[1], err)
		}
	}
	a, err := c.ScatterAndGather()
	if err != nil || a.MinClients != 3 || a.WaitTimeAfterMinReceived != 0 || a.TrainTaskName != "fit" {
		t.Fatalf("%+v %v", a, err)
	}
	for _, c2 := range []struct{ key, value, want string }{
		{"min_client", "3", "unknown workflow argument (known: aggregator_id, cleanup_models"},
		{"min_clients", "many", "cannot unmarshal string"},
		{"validation_timeout", "5", "the job has no CrossSiteModelEval workflow"},
	} {
		if err := c.SetWorkflowArg(c2.key, c2.value); err == nil || !strings.Contains(err.Error(), c2.want) {
			t.Errorf("%s=%s: %v, want %q", c2.key, c2.value, err, c2.want)
		}
	}
}

// --set words as the server and client commands take them: parsed into a
// map, the server's own keys kept apart from the workflow arguments,
// unknown keys refused naming the known ones, and the workflow words
// applied in order.
func TestSetOverrides(t *testing.T) {
	if _, err := flare.ParseSets([]string{"uid=site-1", "secure_train"}); err == nil || !strings.Contains(err.Error(), `"secure_train" is not key=value`) {
		t.Errorf("a word without =: %v", err)
	}
	sets, err := flare.ParseSets([]string{"secure_train=true", "num_rounds=2", "min_clients=1", "num_rounds=3"})
	if err != nil || len(sets) != 3 || sets["num_rounds"] != "3" {
		t.Fatalf("%v %v", sets, err)
	}
	wf, err := flare.ServerSets(sets)
	if err != nil || strings.Join(wf, " ") != "min_clients=1 num_rounds=3" {
		t.Fatalf("workflow words %q, %v", wf, err)
	}
	if _, err := flare.ServerSets(map[string]string{"bogus": "1"}); err == nil ||
		!strings.Contains(err.Error(), "--set bogus: unknown key (known: secure_train, config_folder; workflow arguments: ") {
		t.Errorf("unknown server key: %v", err)
	}
	if err := flare.CheckSetKeys(map[string]string{"uid": "a", "num_rounds": "1"}, "uid"); err != nil {
		t.Errorf("own and workflow keys: %v", err)
	}
	if err := flare.CheckClientSets(map[string]string{"uid": "site-1", "secure_train": "false"}); err != nil {
		t.Errorf("client keys: %v", err)
	}
	if err := flare.CheckClientSets(map[string]string{"num_rounds": "1"}); err == nil ||
		!strings.Contains(err.Error(), "--set num_rounds: unknown key for a client (known: uid, secure_train, config_folder, org)") {
		t.Errorf("a workflow key on a client: %v", err)
	}
	c := flaretest.ServerConfig(1, 1, 10)
	if err := c.SetWorkflowArgs(wf); err != nil {
		t.Fatal(err)
	}
	if a, err := c.ScatterAndGather(); err != nil || a.MinClients != 1 || a.NumRounds != 3 {
		t.Fatalf("%+v %v", a, err)
	}
	if err := c.SetWorkflowArgs([]string{"num_rounds"}); err == nil || !strings.Contains(err.Error(), `--set "num_rounds" is not key=value`) {
		t.Errorf("a word without =: %v", err)
	}
	if err := c.SetWorkflowArgs([]string{"num_rounds=4", "min_client=2"}); err == nil || !strings.Contains(err.Error(), "unknown workflow argument") {
		t.Errorf("unknown workflow key: %v", err)
	}
}
