# layer.gp: MoE layer forward+backward from OUT/layer.csv, two panels: time against the number
# of experts (one line per thread count), and time against threads (one line per E)
# (gnuplot -e "out='results/bench'" experiments/bench/layer.gp)
set datafile separator ","
set terminal pngcairo size 1100,440 font ",11"
set output out."/layer.png"
set multiplot layout 1,2 title "MoE layer forward+backward, T=4096 D=256 F=1024 k=2 (median, min-max of the repeats)"
set ylabel "milliseconds"
set yrange [0:*]
set key bottom right
set title "against experts E (k = 2 fixed)"
set xlabel "experts E"
set logscale x 2
set xtics (8, 16, 32, 64)
set xrange [7:73]
plot out."/layer.csv" using ($1==1 ? $2 : 1/0):($3*1000):($4*1000):($5*1000) with yerrorlines title "1 thread", \
     out."/layer.csv" using ($1==2 ? $2 : 1/0):($3*1000):($4*1000):($5*1000) with yerrorlines title "2 threads"
unset logscale x
set title "against threads"
set xlabel "threads"
set xtics (1, 2)
set xrange [0.8:2.2]
set key top right
# one data set per E (rows of other E in between would break the lines)
plot for [E in "8 16 32 64"] sprintf("< awk -F, '$2 == %s' %s/layer.csv", E, out) \
         using 1:($3*1000):($4*1000):($5*1000) with yerrorlines title "E = ".E
unset multiplot
