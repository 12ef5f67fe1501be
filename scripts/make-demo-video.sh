#!/usr/bin/env bash
# Makes web/media/demo.mp4, the video a Watch Together room plays out of the box
# (embedded in the binary and served at /media/demo.mp4; see docs/SYNC.md).
#
# A test pattern with the running time (to the frame) and frame number drawn in
# large type, so two tabs in step can be compared at a glance, and a 440 Hz tone
# that beeps on every second (the beep is where the audio sync is heard).
# 24 s, 640x360 at 25 fps, H.264 (baseline-compatible) + AAC, faststart, a few
# hundred KB. Deterministic given the same ffmpeg; the output is committed, so
# only run this to change the video.
#
# Usage: scripts/make-demo-video.sh [OUT]   (default web/media/demo.mp4)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-web/media/demo.mp4}"
seconds=24
command -v ffmpeg >/dev/null || { echo "ffmpeg is needed (apt-get install ffmpeg)" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# drawtext needs a font: the first DejaVu/Liberation sans found, else fontconfig's default.
font=""
for f in /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf \
         /usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf; do
  [ -f "$f" ] && { font="fontfile=$f:"; break; }
done
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc=size=640x360:rate=25:duration=${seconds}" \
  -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=48000:duration=${seconds}" \
  -filter_complex "[0:v]drawbox=x=0:y=120:w=640:h=120:color=black@0.75:t=fill,\
drawtext=${font}text='tandem demo %{pts\:hms}':fontsize=34:fontcolor=white:x=(w-tw)/2:y=135,\
drawtext=${font}text='frame %{frame_num}':fontsize=30:fontcolor=yellow:x=(w-tw)/2:y=190[v]" \
  -map "[v]" -map 1:a \
  -c:v libx264 -profile:v main -pix_fmt yuv420p -preset slow -crf 31 -g 50 -bf 0 \
  -c:a aac -b:a 48k -ac 1 \
  -movflags +faststart -map_metadata -1 -fflags +bitexact -flags:v +bitexact -flags:a +bitexact \
  "$out"
echo "wrote $out ($(stat -c %s "$out") bytes, ${seconds} s)"
