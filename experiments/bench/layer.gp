# layer.gp: MoE layer forward+backward time against the number of experts, one line per
# thread count, from OUT/layer.csv (gnuplot -e "out='results/bench'" experiments/bench/layer.gp)
set datafile separator ","
set terminal pngcairo size 720,440 font ",11"
set output out."/layer.png"
set title "MoE layer forward+backward, T=4096 D=256 F=1024 k=2 (median, min-max)"
set xlabel "experts E (k = 2 fixed)"
set ylabel "milliseconds"
set logscale x 2
set xtics (8, 16, 32, 64)
set yrange [0:*]
set key top left
plot out."/layer.csv" using ($1==1 ? $2 : 1/0):($3*1000):($4*1000):($5*1000) with yerrorlines title "1 thread", \
     out."/layer.csv" using ($1==2 ? $2 : 1/0):($3*1000):($4*1000):($5*1000) with yerrorlines title "2 threads"
