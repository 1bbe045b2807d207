# plot.gp: compress, quality against memory: for every system of OUT/table.csv
# the mean quality after compression (bars: 95% t-interval over seeds) against
# the parameter bytes as stored (left) and the bytes a token reads (right);
# the uncompressed model is the black square. Middle: against the nonzero parameters
# (where neuron pruning shows: its zeros are stored).
#   gnuplot -e "out='results/compress'; metric='accuracy'" experiments/compress/plot.gp
#   gnuplot -e "out='results/compress/lm'; metric='bits_per_byte'" experiments/compress/plot.gp
# draws OUT/compress.png
if (!exists("out")) out = "results/compress"
if (!exists("metric")) metric = "accuracy"
acc = metric eq "accuracy"
set datafile separator ","
set terminal pngcairo size 1500,480 font ",9"
set output out."/compress.png"
unset key
set grid
# table.csv columns: system, runs, then mean,sd of each number (from runs.csv column 3 on), then the intervals.
# runs.csv numbers: parameters, parameters_nonzero, parameter_bytes, resident_bytes_per_token, before, after, change, loss_before, loss_after
# -> means at 3,5,7,9,11,13,...: parameter_bytes mean = col 7, resident mean = col 9, after mean = col 13;
#    intervals start at col 21: after ci = cols 31, 32
scale = acc ? 100 : 1
ylab = acc ? "test accuracy after compression (%)" : "validation bits per byte after compression"
# kinds: 0 uncompressed, 1 int8, 2 expert pruning, 3 neuron pruning (one-shot), 4 experts + neurons + int8,
# 5 one-shot neuron pruning + fine-tuning, 6 iterative neuron pruning (train.prune, with or without QAT),
# 7 int8 after fine-tuning (float, or quantization-aware)
kind(s) = (s[1:4] eq "none" ? 0 : s[1:4] eq "int8" ? 1 : s[1:7] eq "experts" ? (strstrt(s, "+") ? 4 : 2) : \
           strstrt(s, "iterative") ? 6 : strstrt(s, "oneshot-ft") ? 5 : (s[1:3] eq "ft-" || s[1:3] eq "qat") ? 7 : 3)
pts(k) = (k == 0 ? 5 : k == 1 ? 7 : k == 2 ? 9 : k == 3 ? 11 : k == 4 ? 13 : k == 5 ? 4 : k == 6 ? 6 : 8)
name(k) = (k == 0 ? "uncompressed" : k == 1 ? "int8" : k == 2 ? "expert pruning" : k == 3 ? "neuron pruning" : \
           k == 4 ? "experts + neurons + int8" : k == 5 ? "neurons one-shot + fine-tune" : \
           k == 6 ? "neurons iterative (train.prune)" : "fine-tuned: float, int8, QAT")
set multiplot layout 1,3 title "moe compress on ".(acc ? "Fashion-MNIST mlp-moe" : "the byte-level LM (fortunes)")." (means, 95% t-intervals over seeds)"
set xlabel "parameter bytes as stored (KiB)"
set ylabel ylab
plot for [k=0:7] out."/table.csv" every ::1 using (kind(strcol(1)) == k ? $7/1024 : NaN):(scale*$13):(scale*$31):(scale*$32) \
       with yerrorbars pt pts(k) ps 1.2 notitle, \
     out."/table.csv" every ::1 using ($7/1024):(scale*$13):1 with labels font ",6" offset 0,0.7 notitle
set xlabel "nonzero parameters (thousands; the zeros of neuron pruning are stored)"
# the key where the points are not: bottom right for accuracy (higher is better), top right for bits per byte
if (acc) { set key inside right bottom Left reverse samplen 1 font ",8" box opaque } else { set key inside right top Left reverse samplen 1 font ",8" box opaque }
plot for [k=0:7] out."/table.csv" every ::1 using (kind(strcol(1)) == k ? $5/1000 : NaN):(scale*$13):(scale*$31):(scale*$32) \
       with yerrorbars pt pts(k) ps 1.2 title name(k)
unset key
set xlabel "bytes a token reads (KiB)"
plot for [k=0:7] out."/table.csv" every ::1 using (kind(strcol(1)) == k ? $9/1024 : NaN):(scale*$13):(scale*$31):(scale*$32) \
       with yerrorbars pt pts(k) ps 1.2 notitle
unset multiplot
