package model

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Evaluate's accuracy is the share of images whose largest logit is their
// class and its loss the mean of -log softmax(logits)[class], over the
// images Predict could read; with none readable it is ErrNoImages; a class
// the net has no output for is refused.
func TestEvaluate(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteSyntheticCXR(dir, 3, 1); err != nil {
		t.Fatal(err)
	}
	// One unreadable image: skipped, not counted.
	os.WriteFile(filepath.Join(dir, "NORMAL", "broken.png"), []byte("not an image"), 0o600)
	_, samples, err := ImageFolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	small := &Spec{Name: "Small", Input: []int{3, 28, 28}, Layers: []Layer{
		{Op: "conv2d", Name: "c", Out: 2, Kernel: 3}, {Op: "maxpool2d", Kernel: 2}, {Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	sd, _ := Init(small, 3)
	net, err := NewNet(small, sd, 2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var warned []string
	ev, err := Evaluate(ctx, net, samples, 2, func(m string) { warned = append(warned, m) })
	if err != nil {
		t.Fatal(err)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "broken.png") {
		t.Errorf("warnings %q, want one naming broken.png", warned)
	}
	preds, err := Predict(ctx, net, samples, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	right := 0
	var ce float64
	for _, p := range preds {
		if (p.Logits[1] > p.Logits[0]) == (p.Sample.Class == 1) {
			right++
		}
		l0, l1 := float64(p.Logits[0]), float64(p.Logits[1])
		m := math.Max(l0, l1)
		ce += m + math.Log(math.Exp(l0-m)+math.Exp(l1-m)) - float64(p.Logits[p.Sample.Class])
	}
	if ev.Images != len(samples)-1 || ev.Images != len(preds) || ev.Correct != right {
		t.Errorf("%+v: want %d images, %d correct", ev, len(preds), right)
	}
	if want := float64(right) / float64(len(preds)); math.Abs(ev.Accuracy-want) > 1e-12 {
		t.Errorf("accuracy %v, want %v", ev.Accuracy, want)
	}
	// CrossEntropy sums in float32 (as training does), so the two agree to
	// float32's precision, not float64's.
	if want := ce / float64(len(preds)); math.Abs(ev.Loss-want) > 1e-6*math.Max(1, want) {
		t.Errorf("loss %v, want %v", ev.Loss, want)
	}

	var broken []Sample
	for _, s := range samples {
		if filepath.Base(s.Path) == "broken.png" {
			broken = append(broken, s)
		}
	}
	if _, err := Evaluate(ctx, net, broken, 2, nil); !errors.Is(err, ErrNoImages) {
		t.Errorf("no readable image: %v, want ErrNoImages", err)
	}
	third := append([]Sample(nil), samples...)
	for i := range third {
		third[i].Class = 2
	}
	if _, err := Evaluate(ctx, net, third, 2, nil); err == nil || !strings.Contains(err.Error(), "label 2 out of range") {
		t.Errorf("a class the net has no output for: %v", err)
	}
}
