package integration

import "time"

// patience bounds every wait for a state in these tests. It is generous on
// purpose: a busy machine under -race makes a test slower, never wrong.
const patience = time.Minute
