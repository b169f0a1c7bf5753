package fcp

import (
	"filippo.io/age"
	"github.com/flarego/flarego/persistor"
)

// Recipients are the model owners' age recipients from the "recipients"
// entry of the key file (KeyPath), next to "key": when there are any, the
// secured persistor encrypts the models it saves to them, and the key file
// holds nothing that opens those models. None when the file or the entry is
// missing.
func (l Locations) Recipients() ([]age.Recipient, error) {
	return persistor.ReadParamsRecipients(l.KeyPath())
}
