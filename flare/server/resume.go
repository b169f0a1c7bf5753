package server

import (
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// The meta_props keys a resumable server adds to each global model it
// saves: the job's fingerprint, and the round (from 0, as NVFlare's
// current_round) and number of rounds of the run that made it. NVFlare's
// PT persistors keep meta_props as the model's meta; torch.load reads
// them as a plain dict.
const (
	metaJob       = "flarego_job"
	metaRound     = "current_round"
	metaNumRounds = "num_rounds"
)

// markRound records in ck's meta_props, for a resumable server, that ck
// is the global model after round r of rounds.
func (s *Server) markRound(ck *persistor.Checkpoint, r, rounds int) {
	if s.Resume == "" {
		return
	}
	items := []pickle.Item{}
	if ck.MetaProps != nil {
		for _, it := range ck.MetaProps.Items {
			if k, _ := it.Key.(string); k != metaJob && k != metaRound && k != metaNumRounds {
				items = append(items, it)
			}
		}
	}
	items = append(items, pickle.Item{Key: metaJob, Value: s.Resume}, pickle.Item{Key: metaRound, Value: int64(r)},
		pickle.Item{Key: metaNumRounds, Value: int64(rounds)})
	ck.MetaProps = &pickle.Dict{Items: items}
}

// resumed returns the last global model of an unfinished run of the same
// job and the round to go on from, or nil when the run starts afresh
// (saying why when a model was there).
func (s *Server) resumed(run *runState) (*persistor.Checkpoint, int) {
	rp, ok := run.persist.(flare.ResumablePersistor)
	if s.Resume == "" || !ok {
		return nil, 0
	}
	last, where, err := rp.Last()
	switch {
	case err != nil:
		s.logf("not resuming from the last global model: %v; the run starts from round %d", err, run.sag.StartRound+1)
		return nil, 0
	case last == nil:
		return nil, 0
	}
	job, _ := metaValue(last, metaJob).(string)
	r, _ := metaValue(last, metaRound).(int64)
	n, _ := metaValue(last, metaNumRounds).(int64)
	switch {
	case job != s.Resume:
		s.logf("%s is not this job's (another job or settings made it): the run starts from round %d and replaces it", where, run.sag.StartRound+1)
		return nil, 0
	case n != int64(run.sag.NumRounds) || r < 0 || r+1 >= n:
		s.logf("%s is the global model of a finished run of this job (round %d/%d): the run starts again from round %d", where, r+1, n, run.sag.StartRound+1)
		return nil, 0
	}
	s.logf("resuming: %s holds this job's global model after round %d/%d; the run goes on from round %d/%d", where, r+1, n, r+2, n)
	return last, int(r + 1)
}

func metaValue(ck *persistor.Checkpoint, key string) any {
	if ck.MetaProps == nil {
		return nil
	}
	for _, it := range ck.MetaProps.Items {
		if k, _ := it.Key.(string); k == key {
			return it.Value
		}
	}
	return nil
}
