#!/usr/bin/env node
// publish.js: publishes through nsqjs's Writer to an nsqd-compatible TCP
// address (deferd's TCPServer or a real nsqd) and prints one line per
// result, for a test to compare.
//
// Usage: node publish.js HOST:PORT TOPIC
//
// nsqjs is pinned in package.json and package-lock.json beside this script
// and installed into node_modules here (git-ignored), where node finds it:
//
//   .ci/install-nsqjs.sh          # npm ci in ingest/testdata/nsqjs
//   node ingest/testdata/nsqjs/publish.js 127.0.0.1:4190 t
//
// nsqjs_test.go (module root) runs it against a Scheduler's TCP listener.
//
// Output, one line each, in order:
//   ready
//   publish ok | publish error <message>            PUB "hello"
//   mpublish ok | mpublish error <message>          MPUB ["a", "b"]
//   defer at <unix ms>                              Date.now() just before the DPUB is written
//   defer ok | defer error <message>                DPUB 1500 ms "later"
//   defer2h ok | defer2h error <message>            DPUB 2 h "much later" (nsqd refuses; deferd accepts)
//   closed
// It exits 0 if every step printed "ok", 1 otherwise, 2 on bad usage or a
// connection that failed before "ready".
'use strict'

const nsq = require('nsqjs')

const [addr, topic] = process.argv.slice(2)
if (!addr || !topic || !addr.includes(':')) {
  console.error('usage: node publish.js HOST:PORT TOPIC')
  process.exit(2)
}
const i = addr.lastIndexOf(':')
const host = addr.slice(0, i)
const port = Number(addr.slice(i + 1))

const w = new nsq.Writer(host, port)
let failed = false
let ready = false

// step runs fn(callback) and prints "name ok" or "name error ...". A
// fatal error closes the connection, so the next step reconnects first.
function step (name, fn) {
  return new Promise((resolve) => {
    fn((err) => {
      if (err) {
        failed = true
        console.log(`${name} error ${err.message || err}`)
      } else {
        console.log(`${name} ok`)
      }
      resolve()
    })
  })
}

function connected () {
  return new Promise((resolve, reject) => {
    w.once('ready', resolve)
    w.once('error', reject)
    w.connect()
  })
}

w.on('closed', () => {
  if (ready) console.log('closed')
})

async function main () {
  try {
    await connected()
  } catch (err) {
    console.log(`connect error ${err.message || err}`)
    process.exit(2)
  }
  ready = true
  console.log('ready')
  w.on('error', () => {}) // step callbacks report errors
  await step('publish', (cb) => w.publish(topic, 'hello', cb))
  await step('mpublish', (cb) => w.publish(topic, ['a', 'b'], cb))
  console.log(`defer at ${Date.now()}`)
  await step('defer', (cb) => w.deferPublish(topic, ['later'], 1500, cb))
  await step('defer2h', (cb) => w.deferPublish(topic, ['much later'], 2 * 3600 * 1000, cb))
  w.close()
  setTimeout(() => process.exit(failed ? 1 : 0), 200)
}

main()
