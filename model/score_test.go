package model

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func scoreFixture() ([]Sample, []Prediction) {
	samples := []Sample{{Path: "/d/NORMAL/a.png"}, {Path: "/d/PNEUMONIA/b.png", Class: 1}, {Path: "/d/NORMAL/c.png"}}
	var preds []Prediction
	for i, s := range samples[:2] { // c.png could not be read
		preds = append(preds, Prediction{Sample: s, Logits: []float32{0, float32(i) + 0.5}})
	}
	return samples, preds
}

// Scores go to the row that names the image, the column is found from the
// listing before anything is scored, and the CSV is streamed.
func TestScoreCSVByPath(t *testing.T) {
	samples, preds := scoreFixture()
	in := "id,path,label\nP1,PNEUMONIA/b.png,1\nP2,NORMAL/a.png,0\nP3,NORMAL/c.png,0\nP4,NORMAL/none.png\n"
	plan, err := PlanScores(context.Background(), strings.NewReader(in), samples, "/d", "")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep, err := plan.Write(context.Background(), strings.NewReader(in), &out, preds)
	if err != nil {
		t.Fatal(err)
	}
	want := "id,path,label,Model_Score\nP1,PNEUMONIA/b.png,1,1.5\nP2,NORMAL/a.png,0,0.5\nP3,NORMAL/c.png,0,\nP4,NORMAL/none.png,,\n"
	if out.String() != want {
		t.Fatalf("got\n%s", out.String())
	}
	if rep.PathColumn != "path" || rep.Matched != 2 || rep.Unmatched != 2 || len(rep.UnmatchedRows) != 2 || rep.UnmatchedRows[1] != 4 {
		t.Fatalf("report %+v", rep)
	}
}

// What makes a CSV unusable is found in the first pass, before scoring: a
// missing column, a Model_Score column already there, no column naming the
// images, an over-long row, too many fields.
func TestPlanScoresRefusesBeforeScoring(t *testing.T) {
	samples, _ := scoreFixture()
	for _, c := range []struct{ csv, column, want string }{
		{"id,path\nP1,NORMAL/a.png\n", "nosuch", `no column "nosuch" (have id, path)`},
		{"id,Model_Score\n", "", "already has a Model_Score column"},
		{"id,x\nP1,zzz\n", "", "no column of the dataset CSV names the images"},
		{"", "", "dataset CSV is empty"},
		{"id,path\nP1,\"" + strings.Repeat("x", 2<<20) + "\"\n", "path", "row 2: a row is longer than 1048576 bytes"},
		{"id,path\n" + strings.Repeat("a,", 5000) + "b\n", "", "row 2 has 5001 fields"},
		{"id,path\nP1,\"unterminated\n", "path", "reading dataset CSV"},
	} {
		_, err := PlanScores(context.Background(), strings.NewReader(c.csv), samples, "/d", c.column)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.40q: err %v, want %q", c.csv, err, c.want)
		}
	}
}
