# notify_bench's NOTIFY_BENCH_ONLY=cursor (docs/benchmarks.md, eleventh round): an experiment for
# issue 19's option (a), a reader of stream CHAT without a consumer. Every 100 ms, batched
# direct gets from the reader's position; the position kept in a KV key, written per burst.
# argv: nats_url count_file
import asyncio, json, sys, os
import nats

async def main():
    url, path = sys.argv[1], sys.argv[2]
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="cursors", history=1)
    info = await js.stream_info("CHAT")
    nxt = info.state.last_seq + 1
    q = asyncio.Queue()
    inbox = nc.new_inbox()
    async def cb(m):
        await q.put(m)
    await nc.subscribe(inbox, cb=cb)
    count = 0
    while True:
        await asyncio.sleep(0.1)
        while True:
            await nc.publish("$JS.API.DIRECT.GET.CHAT", json.dumps({"seq": nxt, "batch": 512}).encode(), reply=inbox)
            got, last = 0, None
            while True:
                m = await asyncio.wait_for(q.get(), 5)
                h = m.headers or {}
                if "Status" in h or (not m.data and "Nats-Sequence" not in h):
                    break
                last = int(h["Nats-Sequence"])
                got += 1
            if last is not None:
                nxt = last + 1
                count += got
                await kv.put("notifier", str(nxt).encode())
            if got < 512:
                break
        open(path + ".tmp", "w").write(str(count))
        os.replace(path + ".tmp", path)

asyncio.run(main())
