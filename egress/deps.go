package egress

import _ "github.com/nsqio/go-nsq" // the nsqd client egress is built on
