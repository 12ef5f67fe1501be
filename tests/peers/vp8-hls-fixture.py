#!/usr/bin/env python3
"""A VP8 fMP4 HLS folder (init.mp4 with a vp08 sample entry + vpcC, seg00001.m4s…,
index.m3u8, master.m3u8), for working on the replay page without a recorder
(tests/peers/replay-devserver.py serves it). ffmpeg 5.1 cannot put VP8 in MP4, so
this wraps the frames of an IVF file itself; ffprobe reads the result. Video only.

    ffmpeg -f lavfi -i testsrc2=size=640x360:rate=30 -t 12 -c:v libvpx -b:v 1M -g 60 vp8.ivf
    python3 vp8-hls-fixture.py vp8.ivf OUT_DIR
"""
import struct, sys, os

def box(t, *payload):
    body = b''.join(payload)
    return struct.pack('>I4s', 8 + len(body), t.encode()) + body

def fullbox(t, v, flags, *payload):
    return box(t, struct.pack('>I', (v << 24) | flags), *payload)

def read_ivf(path):
    d = open(path, 'rb').read()
    assert d[:4] == b'DKIF'
    hl = struct.unpack('<H', d[6:8])[0]
    w, h, den, num = struct.unpack('<HHII', d[12:24])
    off = hl; frames = []
    while off + 12 <= len(d):
        size, pts = struct.unpack('<IQ', d[off:off+12]); off += 12
        frames.append((pts, d[off:off+size])); off += size
    return w, h, den, num, frames

def init_segment(w, h, timescale):
    mat = struct.pack('>9I', 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    mvhd = fullbox('mvhd', 0, 0, struct.pack('>IIII', 0, 0, 1000, 0), struct.pack('>IH10x', 0x10000, 0x100), mat, b'\0'*24, struct.pack('>I', 2))
    tkhd = fullbox('tkhd', 0, 3, struct.pack('>IIIII', 0, 0, 1, 0, 0), b'\0'*8, struct.pack('>hhhH', 0, 0, 0, 0), mat, struct.pack('>II', w << 16, h << 16))
    mdhd = fullbox('mdhd', 0, 0, struct.pack('>IIII', 0, 0, timescale, 0), struct.pack('>HH', 0x55c4, 0))
    hdlr = fullbox('hdlr', 0, 0, struct.pack('>I4s12x', 0, b'vide'), b'VideoHandler\0')
    vpcc = fullbox('vpcC', 1, 0, struct.pack('>BBBBBBH', 0, 10, (8 << 4) | (1 << 1) | 0, 1, 1, 1, 0))
    entry = box('vp08', b'\0'*6, struct.pack('>H', 1), b'\0'*16, struct.pack('>HHIIIH', w, h, 0x480000, 0x480000, 0, 1), b'\0'*32, struct.pack('>Hh', 0x18, -1), vpcc)
    stsd = fullbox('stsd', 0, 0, struct.pack('>I', 1), entry)
    stbl = box('stbl', stsd, fullbox('stts', 0, 0, b'\0'*4), fullbox('stsc', 0, 0, b'\0'*4), fullbox('stsz', 0, 0, b'\0'*8), fullbox('stco', 0, 0, b'\0'*4))
    dinf = box('dinf', fullbox('dref', 0, 0, struct.pack('>I', 1), fullbox('url ', 0, 1)))
    minf = box('minf', fullbox('vmhd', 0, 1, b'\0'*8), dinf, stbl)
    trak = box('trak', tkhd, box('mdia', mdhd, hdlr, minf))
    mvex = box('mvex', fullbox('trex', 0, 0, struct.pack('>IIIII', 1, 1, 0, 0, 0)))
    ftyp = box('ftyp', b'iso6', struct.pack('>I', 0), b'iso6mp41cmfc')
    return ftyp + box('moov', mvhd, trak, mvex)

def media_segment(seq, base, samples):
    # samples: [(duration, data, key)]
    n = len(samples)
    def moof(data_offset):
        trun = fullbox('trun', 0, 0x000001 | 0x000100 | 0x000200 | 0x000400, struct.pack('>Ii', n, data_offset),
                       b''.join(struct.pack('>III', d, len(x), 0x02000000 if k else 0x01010000) for d, x, k in samples))
        traf = box('traf', fullbox('tfhd', 0, 0x020000, struct.pack('>I', 1)), fullbox('tfdt', 1, 0, struct.pack('>Q', base)), trun)
        return box('moof', fullbox('mfhd', 0, 0, struct.pack('>I', seq)), traf)
    m = moof(0)
    m = moof(len(m) + 8)
    styp = box('styp', b'msdh', struct.pack('>I', 0), b'msdhmsix')
    return styp + m + box('mdat', *(x for _, x, _ in samples))

def main(ivf, out, seg_secs=2.0):
    w, h, den, num, frames = read_ivf(ivf)
    timescale = 90000
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, 'init.mp4'), 'wb').write(init_segment(w, h, timescale))
    # pts in den/num units (ivf: timebase num/den): ffmpeg writes rate=den, scale=num
    tick = timescale * num // den
    segs, cur, base = [], [], 0
    for i, (pts, data) in enumerate(frames):
        key = (data[0] & 1) == 0
        if key and cur and len(cur) * tick >= seg_secs * timescale:
            segs.append((base, cur)); base += len(cur) * tick; cur = []
        cur.append((tick, data, key))
    if cur: segs.append((base, cur))
    lines = ['#EXTM3U', '#EXT-X-VERSION:7', f'#EXT-X-TARGETDURATION:{int(seg_secs + 1)}', '#EXT-X-PLAYLIST-TYPE:VOD', '#EXT-X-MEDIA-SEQUENCE:1', '#EXT-X-MAP:URI="init.mp4"']
    for i, (b, s) in enumerate(segs, 1):
        name = f'seg{i:05d}.m4s'
        open(os.path.join(out, name), 'wb').write(media_segment(i, b, s))
        lines += [f'#EXTINF:{len(s) * tick / timescale:.3f},', name]
    lines.append('#EXT-X-ENDLIST')
    open(os.path.join(out, 'index.m3u8'), 'w').write('\n'.join(lines) + '\n')
    open(os.path.join(out, 'master.m3u8'), 'w').write(f'#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH=1000000,CODECS="vp08.00.41.08",RESOLUTION={w}x{h}\nindex.m3u8\n')

if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
