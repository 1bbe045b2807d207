# cuda-layer.gp: the GPU MoE layer against cuBLAS sgemm of equal FLOPs, from OUT/layer.csv
# (results/cuda-bench: `moe bench --device cuda`, one row per shape). Two panels: the
# forward and forward+backward ratio to sgemm with the issue's 0.70 target, and the routing
# share (router + dispatch + combine + aux over the layer) with its 0.10 ceiling.
# (gnuplot -e "out='results/cuda-bench'" experiments/bench/cuda-layer.gp)
set datafile separator ","
set terminal pngcairo size 1100,440 font ",11"
set output out."/layer.png"
set multiplot layout 1,2 title "MoE layer on the GPU (D=1024 F=4096 E=8; median of 5 repeats), against cuBLAS sgemm of equal FLOPs"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set xtics rotate by -20 nomirror
set key top left
set yrange [0:1.35]
set title "ratio to sgemm (higher is better)"
set ylabel "layer GEMM rate / sgemm rate"
name(r,a,k,t) = sprintf("%s k=%d %s T=%dk", r, k, a, t/1024)
plot out."/layer.csv" every ::1 using 7:xtic(name(strcol(3), strcol(4), $5, $2)) title "forward", \
     '' every ::1 using 9 title "forward + backward", \
     0.70 with lines dt 2 lw 2 lc rgb "black" title "target 0.70"
set title "routing share of the forward+backward (lower is better)"
set ylabel "share"
set yrange [0:0.22]
plot out."/layer.csv" every ::1 using 12:xtic(name(strcol(3), strcol(4), $5, $2)) title "router + dispatch + combine + aux" lc rgb "#d95f02", \
     0.10 with lines dt 2 lw 2 lc rgb "black" title "ceiling 0.10"
unset multiplot
