package server

import (
	"strings"
	"sync"

	"github.com/flarego/flarego/flare"
)

// adminQueue holds, per client token, the requests Retrieve hands out,
// and the waiters for their replies.
type adminQueue struct {
	mu      sync.Mutex
	pending map[string][]*flare.AdminRequest
	waiters map[string]chan *flare.AdminReply // token + "/" + message id
	polled  map[string]bool                   // tokens that poll the channel
	sent    map[string]bool                   // token + "/" + topic delivered
	// A one-job server deploys and starts its app on every new client.
	app     []byte
	appName string
	served  map[string]bool
}

func (q *adminQueue) init() {
	if q.pending == nil {
		q.pending, q.waiters = map[string][]*flare.AdminRequest{}, map[string]chan *flare.AdminReply{}
		q.polled, q.sent, q.served = map[string]bool{}, map[string]bool{}, map[string]bool{}
	}
}

func (q *adminQueue) forClient(token, run string) []*flare.AdminRequest {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	q.polled[token] = true
	if q.app != nil && !q.served[token] {
		q.served[token] = true
		q.pending[token] = append(q.pending[token],
			flare.NewAdminRequest(flare.TopicSetRunNumber, run, nil),
			flare.NewAdminRequest(flare.TopicDeploy, run, q.app, "app_name", q.appName),
			flare.NewAdminRequest(flare.TopicStart, run, nil))
	}
	msgs := q.pending[token]
	delete(q.pending, token)
	for _, m := range msgs {
		q.sent[token+"/"+m.Topic] = true
	}
	return msgs
}

// send queues m for each token; each returned channel gets its reply.
func (q *adminQueue) send(tokens []string, m *flare.AdminRequest) map[string]chan *flare.AdminReply {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	out := map[string]chan *flare.AdminReply{}
	for _, tok := range tokens {
		ch := make(chan *flare.AdminReply, 1)
		q.waiters[tok+"/"+m.ID] = ch
		q.pending[tok] = append(q.pending[tok], m)
		delete(q.sent, tok+"/"+m.Topic)
		out[tok] = ch
	}
	return out
}

// cancel forgets the requests and waiters of a finished send.
func (q *adminQueue) cancel(tokens []string, m *flare.AdminRequest) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, tok := range tokens {
		delete(q.waiters, tok+"/"+m.ID)
		msgs := q.pending[tok][:0]
		for _, p := range q.pending[tok] {
			if p != m {
				msgs = append(msgs, p)
			}
		}
		if len(msgs) == 0 {
			// A token forgotten while the request was in flight, or one
			// with nothing else queued: keep no key for it.
			delete(q.pending, tok)
			continue
		}
		q.pending[tok] = msgs
	}
}

// reply hands a client's reply to the request of id requestID to its waiter.
func (q *adminQueue) reply(token, requestID string, r *flare.AdminReply) {
	q.mu.Lock()
	defer q.mu.Unlock()
	key := token + "/" + requestID
	if ch, ok := q.waiters[key]; ok {
		delete(q.waiters, key)
		ch <- r
	}
}

// forget drops what the queue holds for a token the server no longer
// knows (a client dropped, logged out or registered again): without it
// every re-registration would leave its old token's entries behind.
func (q *adminQueue) forget(token string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.pending, token)
	delete(q.polled, token)
	delete(q.served, token)
	prefix := token + "/"
	for k := range q.sent {
		if strings.HasPrefix(k, prefix) {
			delete(q.sent, k)
		}
	}
	for k := range q.waiters {
		if strings.HasPrefix(k, prefix) {
			delete(q.waiters, k)
		}
	}
}

// shutdownPolled queues a shutdown for every client that polls the
// channel (a one-job server's clients, when the job is done).
func (q *adminQueue) shutdownPolled(run string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	for tok := range q.polled {
		q.pending[tok] = append(q.pending[tok], flare.NewAdminRequest(flare.TopicShutdown, run, nil))
	}
}

// delivered says whether the client polls the admin channel, and if it
// fetched a request of this topic.
func (q *adminQueue) delivered(token, topic string) (polls, fetched bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.polled[token], q.sent[token+"/"+topic]
}

// ServeAppTo makes a one-job server deploy the app folder dir to every
// client that polls its admin channel, and start it there, as NVFlare's
// admin deploy_app and start_app do; when the job is done those clients
// are told to shut down.
func (s *Server) ServeAppTo(dir, name string) error {
	app, err := flare.ZipApp(dir)
	if err != nil {
		return err
	}
	if plain := flare.PlaintextCode(dir); len(plain) > 0 {
		s.logf("warning: app %s sends model code in plaintext to every client: %s (encrypt it: flarego encrypt FILE KEY FILE.enc)", name, strings.Join(plain, ", "))
	}
	s.admin.mu.Lock()
	defer s.admin.mu.Unlock()
	s.admin.init()
	s.admin.app, s.admin.appName = app, name
	return nil
}
