# cuda-parity.gp: every CUDA kernel against the CPU library, from OUT/test_cuda_ops.log
# (results/cuda-parity: tests/test_cuda_ops on a GPU). Each "# NAME  N of M differ; largest
# relative difference R" line is one comparison; an awk pass sums them per operation (floats
# differing over floats compared, and the largest R). Two panels: the share of floats that
# differ in any bit, and the largest relative difference (log scale; bit-identical operations
# are drawn at 1e-10, and a difference against an exact 0 on one side, which is relative 1 or
# more, e.g. GELU where 1 + tanh cancels, is drawn at 1).
# (gnuplot -e "out='results/cuda-parity'" experiments/bench/cuda-parity.gp)
set datafile separator ","
set terminal pngcairo size 1200,520 font ",10"
set output out."/parity.png"
agg = "< awk '/^# .* differ; largest relative difference/ { n = substr($0, 3, 38); sub(/ +$/, \"\", n); " . \
      "match($0, /[0-9]+ of +[0-9]+ differ/); split(substr($0, RSTART, RLENGTH), a, / +/); d[n] += a[1]; m[n] += a[3]; " . \
      "match($0, /difference [0-9.e+-]+/); r = substr($0, RSTART + 11, RLENGTH - 11) + 0; if (r > x[n]) x[n] = r; if (!(n in o)) o[n] = ++k } " . \
      "END { for (n in o) printf \"%d,%s,%d,%d,%g\\n\", o[n], n, d[n], m[n], x[n] }' " . out . "/test_cuda_ops.log | sort -t, -k1n"
set multiplot layout 1,2 title "CUDA kernels against the CPU library (tests/test\\_cuda\\_ops on an NVIDIA H200)"
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.8
set xtics rotate by -50 nomirror font ",9"
set key off
set title "floats that differ in any bit (share of those compared)"
set yrange [0:0.4]
plot agg using ($3 / $4):xtic(2) lc rgb "#1b9e77"
set title "largest elementwise relative difference (0 drawn at 1e-10; against an exact 0: 1)"
set logscale y
set yrange [1e-11:3]
set format y "1e%T"
plot agg using ($5 > 0 ? ($5 < 1 ? $5 : 1) : 1e-10):xtic(2) lc rgb "#7570b3"
unset multiplot
